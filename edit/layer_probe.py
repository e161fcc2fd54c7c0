"""``--layers auto``: choose the edit layer (ROME) or span (MEMIT, AlphaEdit) by editing.

Hase et al. 2023 ("Does Localization Inform Editing? Surprising Differences in
Causality-Based Localization vs. Knowledge Editing in Language Models") showed that the
causal-tracing peak does not predict where an edit works. So, per relation of the facts
to edit, a few probe facts (`ProbeConfig`: held out where the fact file allows) are
edited at every candidate, each edit applied with `edit.delta.apply`, scored on its
fact's rewrite, paraphrase and neighbourhood prompts (ES, PS, NS, edit/evaluate.py) and
restored. The rule of `ProbeConfig` picks the candidate; each relation's scores are
cached beside the key statistics (edit/probe_cache.py), so a second run edits nothing.

Example::

    probe = probe_layers(lm, facts, pool, spans, editor_for, ProbeConfig(), "rome", setup)
    probe.layer, probe.scores
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from memloc.core.lm.facts import Fact
from memloc.core.lm.model import LM
from memloc.core.progress import Progress, offset, within
from memloc.edit.delta import Editor, NonFiniteEditError, apply, weights_hash
from memloc.edit.evaluate import EvalConfig, FactScores, score_facts, summarize
from memloc.edit.probe_cache import load_probe, probe_digest, probe_path, save_probe
from memloc.edit.probe_result import LayerProbe, LayerScore, ProbeConfig, RelationProbe, choose, pooled

# (the layers to edit, progress of its steps) -> an editor over them
EditorFor = Callable[[tuple[int, ...], Progress | None], Editor]
Span = tuple[int, tuple[int, ...]]  # (candidate, the layers edited for it)
_SCORING = EvalConfig(fluency=False)


def probe_facts(
    pool: Sequence[Fact], edited: Sequence[Fact], relation: str, count: int
) -> tuple[list[Fact], int]:
    """Up to ``count`` facts of ``relation`` not being edited, topped up with edited ones; and how many of those."""
    editing = {f.case_id for f in edited}
    held = [f for f in pool if f.relation_key == relation and f.case_id not in editing][:count]
    filler = [f for f in edited if f.relation_key == relation][: count - len(held)]
    return held + filler, len(filler)


def _scores(lm: LM, facts: Sequence[Fact], editor: Editor, together: bool) -> list[FactScores]:
    """Each group edited, scored and restored: all facts at once (MEMIT) or one at a time (ROME)."""
    out: list[FactScores] = []
    for group in [list(facts)] if together else [[f] for f in facts]:
        try:
            handle = apply(lm.model, lm.adapter, editor(group))
        except NonFiniteEditError:
            # An edit that would put inf into the weights fails at this layer; score the
            # facts unedited rather than stop the probe.
            out.extend(score_facts(lm, group, _SCORING))
            continue
        with handle:
            out.extend(score_facts(lm, group, _SCORING))
    return out


def probe_relation(
    lm: LM,
    facts: Sequence[Fact],
    spans: Sequence[Span],
    editor_for: EditorFor,
    *,
    together: bool,
    progress: Progress | None = None,
) -> tuple[LayerScore, ...]:
    """ES, PS, NS and the margin of ``facts``' edits at every candidate; the model is restored."""
    rows = []
    for i, (layer, layers) in enumerate(spans):
        # A candidate's edits take a while on a CPU: show their steps under its count.
        steps = within(progress, i, len(spans), f"edit probe at layer {layer}")
        summary = summarize(_scores(lm, facts, editor_for(layers, steps), together))
        em, pm = summary["EM"] or 0.0, summary["PM"]
        margin = em if pm is None else (em + pm) / 2
        rows.append(LayerScore(layer, layers, summary["ES"] or 0.0, summary["PS"], summary["NS"], margin))
        if progress is not None:
            progress(i + 1, len(spans), f"edit probe at layer {layer}")
    return tuple(rows)


def probe_layers(
    lm: LM,
    edited: Sequence[Fact],
    pool: Sequence[Fact],
    spans: Sequence[Span],
    editor_for: EditorFor,
    config: ProbeConfig,
    method: str,
    setup: object,
    *,
    together: bool = False,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> LayerProbe:
    """Probe every relation of ``edited`` (from the cache where it ran before) and choose.

    ``pool`` is the whole fact file (probe facts come from it); ``setup`` describes the
    edit settings for the cache key; ``together`` edits a relation's probe facts in one
    edit (MEMIT, AlphaEdit) instead of one at a time.
    """
    relations = list(dict.fromkeys(f.relation_key for f in edited))
    weights = weights_hash(lm.model)
    probes = []
    total = len(relations) * len(spans)
    if progress is not None:
        progress(0, total, "edit probe")
    for r, relation in enumerate(relations):
        facts, overlap = probe_facts(pool, edited, relation, config.facts)
        described = {
            "setup": setup,
            "relation": relation,
            "facts": [asdict(f) for f in facts],
            "spans": spans,
            "steps": config.steps,
        }
        path = probe_path(cache_dir, weights, method, probe_digest(described))
        found = load_probe(path)
        if found is None:
            start = time.perf_counter()
            steps = offset(progress, r * len(spans), total)
            scores = probe_relation(lm, facts, spans, editor_for, together=together, progress=steps)
            ids = tuple(f.case_id for f in facts)
            found = RelationProbe(relation, ids, overlap, scores, time.perf_counter() - start)
            save_probe(path, found)
        probes.append(found)
    weights_of = [sum(f.relation_key == r for f in edited) for r in relations]
    scores = pooled(probes, weights_of)
    best, met = choose(scores, config.ns_floor)
    return LayerProbe(method, config.rule(), tuple(probes), scores, best.layer, best.layers, met)
