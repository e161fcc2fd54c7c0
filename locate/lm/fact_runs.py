"""Run fact methods over a fact file, resumably, into an optional output folder.

With an output folder each method keeps its finished facts in ``<method>.json``
under a hash of its config (`ResultStore`), so a rerun skips them and a rerun with
another config never overwrites them; the method's `Report` (with provenance) goes
to ``<method>_report.json``. Without a folder nothing is written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from memloc.core.lm.facts import Fact
from memloc.core.lm.model import LM, encode
from memloc.core.progress import Progress, offset
from memloc.core.report import Report, provenance, to_jsonable
from memloc.locate.graph import fact_neuron_graph, fact_sharing_stats, write_graphml
from memloc.locate.lm.interventions import InterventionConfig, intervene
from memloc.locate.lm.knowledge_neurons import FactNeurons, KNConfig, knowledge_neurons, relation_neurons
from memloc.locate.lm.tracing import FactTrace, TraceConfig, average_best_layer, trace_fact
from memloc.locate.results_store import ResultStore, config_key

T = TypeVar("T")


def per_fact(
    name: str,
    config: object,
    facts: Sequence[Fact],
    compute: Callable[[Fact], T],
    out: Path | None,
    progress: Progress | None = None,
    *,
    encode: Callable[[T], object],
    decode: Callable[[Any], T],
) -> list[T]:
    """``compute(fact)`` for every fact, reusing results stored in ``out/<name>.json``.

    Results stay typed; ``encode``/``decode`` turn them into the store's JSON and back.

    Example::

        traces = per_fact("trace", config, facts, lambda f: trace_fact(lm, f, config), out,
                          encode=FactTrace.to_dict, decode=FactTrace.from_dict)
    """
    store = ResultStore(out / f"{name}.json") if out is not None else None
    key = config_key(config)
    results = []
    for i, fact in enumerate(facts):
        stored = store.get(key, fact.case_id) if store is not None else None
        if stored is not None:
            found = decode(stored)
        else:
            found = compute(fact)
            if store is not None:
                store.put(key, fact.case_id, encode(found))
        results.append(found)
        if progress is not None:
            progress(i + 1, len(facts), f"fact {fact.case_id}")
    return results


def fact_report(
    method: str,
    lm: LM,
    facts_path: Path,
    config: object,
    results: dict,
    metrics: dict,
    seed: int | None,
    out: Path | None,
) -> Report:
    report = Report(
        method=method,
        model_id=lm.source,
        config=to_jsonable(config),
        results=results,
        metrics=metrics,
        provenance=provenance(seed, {"facts": facts_path}),
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        report.save(out / f"{method}_report.json")
    return report


def locate_trace(
    lm: LM,
    facts: Sequence[Fact],
    facts_path: Path,
    config: TraceConfig,
    out: Path | None = None,
    progress: Progress | None = None,
    *,
    last_subject_only: bool = False,
) -> Report:
    """Causal traces of every fact, and the edit layer they suggest (``best_layer``).

    ``last_subject_only`` traces just each fact's last subject token, the row that
    ``best_layer`` reads, at a fraction of the cost.
    """

    def one(fact: Fact) -> FactTrace:
        chosen = config
        if last_subject_only:
            chosen = replace(config, tokens=(encode(lm.tokenizer, fact.text, fact.subject).last_subject,))
        return trace_fact(lm, fact, chosen)

    key = {"config": config, "last_subject_only": True} if last_subject_only else config
    traces = per_fact(
        "trace", key, facts, one, out, progress, encode=FactTrace.to_dict, decode=FactTrace.from_dict
    )
    best = average_best_layer(traces)
    metrics = {
        "best_layer": best,
        "per_fact_best_layer": {t.case_id: t.best_layer for t in traces},
        "mean_clean_prob": float(np.mean([t.clean_prob for t in traces])),
        "mean_corrupted_prob": float(np.mean([t.corrupted_prob for t in traces])),
    }
    results = {"best_layer": best, "facts": [t.to_dict() for t in traces]}  # the Report stores JSON
    return fact_report("trace", lm, facts_path, config, results, metrics, config.seed, out)


def neurons_by_fact(
    lm: LM,
    facts: Sequence[Fact],
    config: KNConfig,
    out: Path | None = None,
    progress: Progress | None = None,
) -> tuple[list[FactNeurons], dict]:
    """Each fact's knowledge neurons (resumable per fact), and the relation-level neurons."""
    found = per_fact(
        "neurons",
        config,
        facts,
        lambda f: knowledge_neurons(lm, [f], config).facts[0],
        out,
        progress,
        encode=FactNeurons.to_dict,
        decode=FactNeurons.from_dict,
    )
    relations = relation_neurons(
        {f.case_id: f.neuron_set() for f in found},
        {f.case_id: f.relation for f in found},
        config.relation_share,
    )
    return found, {k: [list(n) for n in v] for k, v in relations.items()}


def locate_knowledge_neurons(
    lm: LM,
    facts: Sequence[Fact],
    facts_path: Path,
    config: KNConfig,
    out: Path | None = None,
    progress: Progress | None = None,
) -> Report:
    """Knowledge neurons (Dai et al. 2022) of every fact, relation neurons and the fact–neuron graph."""
    found, relations = neurons_by_fact(lm, facts, config, out, progress)
    rows = [f.to_dict() for f in found]  # the Report stores JSON, and the graph reads these rows
    graph = fact_neuron_graph(rows)
    sharing = fact_sharing_stats(graph)
    if out is not None:
        write_graphml(graph, out / "neurons.graphml")
    per_layer = Counter(n[0] for r in rows for n in r["neurons"])
    counts = [len(r["neurons"]) for r in rows]
    metrics = {
        "facts": len(rows),
        "mean_neurons": float(np.mean(counts)),
        "median_neurons": float(np.median(counts)),
        "facts_without_neurons": sum(c == 0 for c in counts),
        "neurons_per_layer": {str(k): per_layer[k] for k in sorted(per_layer)},
        "relation_neurons": {k: len(v) for k, v in relations.items()},
    }
    results = {"facts": rows, "relations": relations, "sharing": sharing, "layers": lm.n_layers}
    return fact_report("neurons", lm, facts_path, config, results, metrics, None, out)


def locate_intervention(
    lm: LM,
    facts: Sequence[Fact],
    facts_path: Path,
    kn: KNConfig,
    config: InterventionConfig,
    out: Path | None = None,
    progress: Progress | None = None,
) -> Report:
    """Suppress or enhance each fact's own refined neurons, against random neurons and control facts."""
    found, _ = neurons_by_fact(lm, facts, kn, out, offset(progress, 0, 2 * len(facts)))
    neurons = {f.case_id: f.neurons for f in found}
    result = intervene(
        lm,
        facts,
        neurons,
        config,
        progress=offset(progress, len(facts), 2 * len(facts)),
    )
    data = result.to_dict()  # the Report stores JSON
    return fact_report(config.mode, lm, facts_path, config, data, result.summary(), config.seed, out)
