"""Run fact methods over a fact file, resumably, into an optional output folder.

With an output folder each method keeps its finished facts in ``<method>.json``
under a hash of its config (`ResultStore`), so a rerun skips them and a rerun with
another config never overwrites them; the method's `Report` (with provenance) goes
to ``<method>_report.json``. Without a folder nothing is written. Each runner returns
its typed run (locate/lm/fact_results.py); the Report is only the stored envelope.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from memloc.core.lm.facts import Fact
from memloc.core.lm.model import LM, encode
from memloc.core.progress import Progress, offset, within
from memloc.core.report import Report, provenance, to_jsonable
from memloc.locate.graph import fact_neuron_graph, fact_sharing_stats, write_graphml
from memloc.locate.lm.fact_results import KNRun, RelationNeurons, TraceRun
from memloc.locate.lm.interventions import InterventionConfig, InterventionResult, intervene
from memloc.locate.lm.knowledge_neurons import FactNeurons, KNConfig, knowledge_neurons, relation_neurons
from memloc.locate.lm.tracing import FactTrace, TraceConfig, trace_fact
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
) -> TraceRun:
    """Causal traces of every fact, and the edit layer they suggest (``best_layer``).

    ``last_subject_only`` traces just each fact's last subject token, the row that
    ``best_layer`` reads, at a fraction of the cost.

    Example::

        run = locate_trace(lm, load_facts(path), path, TraceConfig(kinds=("mlp",)))
        run.best_layer, run.traces[0].clean_prob
    """

    position = {fact.case_id: i for i, fact in enumerate(facts)}

    def one(fact: Fact) -> FactTrace:
        chosen = config
        if last_subject_only:
            chosen = replace(config, tokens=(encode(lm.tokenizer, fact.prompt, fact.subject).last_subject,))
        # A fact's trace takes minutes on a real model: its cells show on the bar.
        cells = within(progress, position[fact.case_id], len(facts), f"fact {fact.case_id}")
        return trace_fact(lm, fact, chosen, progress=cells)

    key = {"config": config, "last_subject_only": True} if last_subject_only else config
    traces = per_fact(
        "trace", key, facts, one, out, progress, encode=FactTrace.to_dict, decode=FactTrace.from_dict
    )
    run = TraceRun.of(traces)
    if out is not None:
        fact_report("trace", lm, facts_path, config, run.to_dict(), run.metrics.to_dict(), config.seed, out)
    return run


def neurons_by_fact(
    lm: LM,
    facts: Sequence[Fact],
    config: KNConfig,
    out: Path | None = None,
    progress: Progress | None = None,
) -> tuple[list[FactNeurons], RelationNeurons]:
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
    return found, {k: tuple(v) for k, v in relations.items()}


def locate_knowledge_neurons(
    lm: LM,
    facts: Sequence[Fact],
    facts_path: Path,
    config: KNConfig,
    out: Path | None = None,
    progress: Progress | None = None,
) -> KNRun:
    """Knowledge neurons (Dai et al. 2022) of every fact, relation neurons and the fact–neuron graph.

    Example::

        run = locate_knowledge_neurons(lm, facts, path, KNConfig(steps=20), out=Path("runs/kn"))
        run.metrics.mean_neurons, run.sharing.shared_neurons
    """
    found, relations = neurons_by_fact(lm, facts, config, out, progress)
    graph = fact_neuron_graph(found)
    run = KNRun(tuple(found), relations, fact_sharing_stats(graph), lm.n_layers)
    if out is not None:
        write_graphml(graph, out / "neurons.graphml")
        fact_report("neurons", lm, facts_path, config, run.to_dict(), run.metrics.to_dict(), None, out)
    return run


def locate_intervention(
    lm: LM,
    facts: Sequence[Fact],
    facts_path: Path,
    kn: KNConfig,
    config: InterventionConfig,
    out: Path | None = None,
    progress: Progress | None = None,
) -> InterventionResult:
    """Suppress or enhance each fact's own refined neurons, against random neurons and control facts.

    Example::

        run = locate_intervention(lm, facts, path, KNConfig(), InterventionConfig(mode="enhance"))
        run.summary().own_change
    """
    found, _ = neurons_by_fact(lm, facts, kn, out, offset(progress, 0, 2 * len(facts)))
    neurons = {f.case_id: f.neurons for f in found}
    result = intervene(
        lm,
        facts,
        neurons,
        config,
        progress=offset(progress, len(facts), 2 * len(facts)),
    )
    if out is not None:
        summary = result.summary().to_dict()
        fact_report(config.mode, lm, facts_path, config, result.to_dict(), summary, config.seed, out)
    return result
