"""One fact edited in a real model and taken back: the language-model half of `memloc demo`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import resources

from memloc.core.lm.facts import Fact, load_facts
from memloc.core.lm.model import LM
from memloc.core.progress import Progress, labelled
from memloc.core.render import Section
from memloc.edit.delta import weights_hash
from memloc.edit.editors import EditPlan
from memloc.edit.evaluate import generate
from memloc.edit.monitor import MonitorConfig
from memloc.edit.session import apply_edits, rewrite_probs
from memloc.edit.stats import StatsConfig


@dataclass(frozen=True)
class Snapshot:
    """The fact's rewrite probabilities and a few greedy generations, at one moment."""

    p_true: float
    p_new: float
    generations: dict[str, str]  # prompt -> continuation


@dataclass(frozen=True)
class DemoEdit:
    """A ROME edit shown before and after, then undone."""

    fact: dict[str, str]  # prompt, target_true, target_new
    layer: int
    before: Snapshot
    after: Snapshot
    update_ratio: dict[int, float]
    undone_bit_exact: bool


DEMO_FACTS = "smollm2-counterfact.json"  # package data (edit/data), a copy of the fixture


def demo_fact() -> Fact:
    """The first fact of the CounterFact file shipped with memloc (SmolLM2-135M's facts)."""
    with resources.as_file(resources.files("memloc.edit") / "data" / DEMO_FACTS) as path:
        return load_facts(path, limit=1)[0]


def _snapshot(lm: LM, fact: Fact, prompts: list[str], tokens: int, progress: Progress | None) -> Snapshot:
    (probs,) = rewrite_probs(lm, [fact])
    texts = generate(lm, prompts, tokens, progress=progress)
    return Snapshot(probs.p_true, probs.p_new, dict(zip(prompts, texts, strict=True)))


def edit_and_undo(
    lm: LM,
    fact: Fact,
    *,
    stats_samples: int = 200,
    tokens: int = 16,
    monitor: MonitorConfig | None = None,
    trace_samples: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> DemoEdit:
    """ROME-edit ``fact`` (layer from causal tracing), show before and after, undo and verify.

    ``trace_samples`` sets the noise samples of the layer-choosing trace (None: the
    `EditPlan` default); ``monitor`` the collapse monitor's prompts and tokens; both
    trade the demo's time against the noise in its checks. Every phase reports to ``progress``.

    Example::

        shown = edit_and_undo(load_language_model("smollm2-135m"), fact)
        shown.after.p_new, shown.undone_bit_exact
    """
    prompts = [fact.text, *fact.paraphrases[:1], *fact.generation_prompts[:1]]
    base = weights_hash(lm.model)
    before = _snapshot(lm, fact, prompts, tokens, labelled(progress, "before the edit"))
    plan = EditPlan("rome", stats=StatsConfig(samples=stats_samples), layer_rule="trace", auto_facts=1)
    if trace_samples is not None:
        plan = replace(plan, auto_trace=replace(plan.auto_trace, samples=trace_samples))
    outcome = apply_edits(lm, [fact], plan, monitor or MonitorConfig(), progress=progress)
    after = _snapshot(lm, fact, prompts, tokens, labelled(progress, "after the edit"))
    outcome.restore()
    return DemoEdit(
        fact={"prompt": fact.text, "target_true": fact.target_true, "target_new": fact.target_new},
        layer=outcome.choice.layers[0],
        before=before,
        after=after,
        update_ratio=outcome.checks[0].update_ratio,
        undone_bit_exact=weights_hash(lm.model) == base,
    )


def edit_section(edit: DemoEdit, model: str = "SmolLM2-135M") -> Section:
    """The edit as a report section: probabilities and generations before and after, and the undo.

    Example::

        build_report(run, out, extra=[edit_section(edit_and_undo(lm, fact))])
    """
    fact = edit.fact
    true, new = f"P({fact['target_true']})", f"P({fact['target_new']})"
    undone = "bit-identical to" if edit.undone_bit_exact else "NOT bit-identical to"
    return Section(
        "Language-model edit (ROME)",
        [
            f"ROME (Meng et al., 2022) rewrote one fact in {model} at layer {edit.layer}, the layer causal "
            f"tracing chose: '{fact['prompt']}' {fact['target_true']} -> {fact['target_new']}.",
            f"{true} went from {edit.before.p_true:.3f} to {edit.after.p_true:.3f} and {new} from "
            f"{edit.before.p_new:.3f} to {edit.after.p_new:.3f}.",
            f"After the undo the weights are {undone} the original ones.",
        ],
        [
            (
                "rewrite probabilities",
                [
                    {"": "before", true: edit.before.p_true, new: edit.before.p_new},
                    {"": "after", true: edit.after.p_true, new: edit.after.p_new},
                ],
            ),
            (
                "greedy generations",
                [
                    {"prompt": prompt, "before": text, "after": edit.after.generations.get(prompt, "")}
                    for prompt, text in edit.before.generations.items()
                ],
            ),
        ],
    )
