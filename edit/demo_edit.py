"""One fact edited in a real model and taken back: the language-model half of `memloc demo`."""

from __future__ import annotations

from collections.abc import Callable

from memloc.core.lm.facts import Fact
from memloc.core.lm.model import LM, encode, target_prob
from memloc.edit.delta import weights_hash
from memloc.edit.editors import EditPlan, prepare_editor
from memloc.edit.evaluate import generate
from memloc.edit.monitor import MonitorConfig, checked_apply
from memloc.edit.stats import StatsConfig


def _snapshot(lm: LM, fact: Fact, prompts: list[str], tokens: int) -> dict:
    true = encode(lm.tokenizer, fact.text, fact.subject, fact.target_true)
    new = encode(lm.tokenizer, fact.text, fact.subject, fact.target_new)
    return {
        "p_true": target_prob(lm.model, true, lm.device),
        "p_new": target_prob(lm.model, new, lm.device),
        "generations": dict(zip(prompts, generate(lm, prompts, tokens), strict=True)),
    }


def edit_and_undo(
    lm: LM,
    fact: Fact,
    *,
    stats_samples: int = 200,
    tokens: int = 16,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict:
    """ROME-edit ``fact`` (layer from causal tracing), show before and after, undo and verify."""
    prompts = [fact.text, *fact.paraphrases[:1], *fact.generation_prompts[:1]]
    base = weights_hash(lm.model)
    before = _snapshot(lm, fact, prompts, tokens)
    plan = EditPlan("rome", stats=StatsConfig(samples=stats_samples), auto_facts=1)
    editor, info = prepare_editor(lm, [fact], plan, progress)
    handle, check = checked_apply(lm, editor([fact]), MonitorConfig())
    after = _snapshot(lm, fact, prompts, tokens)
    handle.restore()
    return {
        "fact": {"prompt": fact.text, "target_true": fact.target_true, "target_new": fact.target_new},
        "layer": info["layers"][0],
        "before": before,
        "after": after,
        "update_ratio": check["update_ratio"],
        "undone_bit_exact": weights_hash(lm.model) == base,
    }
