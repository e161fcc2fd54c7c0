"""The report of a facts folder: whatever `memloc locate trace|neurons|suppress|enhance`
left there, as Markdown and one self-contained HTML page.

Each stored report's results and config are read back into their types
(locate/lm/fact_results.py) before a section reads them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from memloc.core.render import Section, write_report
from memloc.core.report import Report
from memloc.locate.lm.fact_results import KNRun, TraceRun, config_from_dict
from memloc.locate.lm.interventions import InterventionResult
from memloc.locate.lm.knowledge_neurons import KNConfig
from memloc.locate.lm.tracing import FactTrace, TraceConfig
from memloc.locate.lm.tracing_figures import trace_heatmaps

HEATMAPS = 3  # facts whose full trace grids are drawn


def _load(folder: Path, method: str) -> Report | None:
    path = folder / f"{method}_report.json"
    return Report.load(path) if path.is_file() else None


def mlp_effect_figure(traces: list[FactTrace], best: int | None) -> Figure:
    """Mean P(target) with the MLP window restored at the last subject token, per layer."""
    fig = Figure(figsize=(6.5, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    rows = np.stack([t.grids["mlp"][t.last_subject] for t in traces])
    layers = np.arange(rows.shape[1])
    for row in rows:
        ax.plot(layers, row, color="tab:green", alpha=0.15, lw=1)
    ax.plot(layers, np.nanmean(rows, axis=0), color="tab:green", lw=2.5, label="mean over facts")
    ax.axhline(
        float(np.mean([t.corrupted_prob for t in traces])), color="gray", ls=":", label="corrupted (mean)"
    )
    if best is not None:
        ax.axvline(best, color="black", ls="--", label=f"best_layer = {best}")
    ax.set_xlabel("layer (center of the restored MLP window)")
    ax.set_ylabel("P(target)")
    ax.set_title("MLP indirect effect at the subject's last token")
    ax.legend(fontsize=8)
    return fig


def trace_section(report: Report) -> Section:
    run = TraceRun.from_dict(report.results)
    traces, best = list(run.traces), run.best_layer
    config = config_from_dict(TraceConfig, report.config)
    section = Section("Causal tracing")
    section.paragraphs.append(
        f"{len(traces)} facts, {config.samples} corrupted copies each (noise "
        f"{config.noise}×σ of the embeddings, seed {config.seed}). The automatic edit layer "
        f"(the peak MLP effect at the subject's last token, averaged over facts) is **{best}**."
    )
    section.tables.append(
        (
            "per fact",
            [
                {
                    "case_id": t.case_id,
                    "prompt": t.prompt,
                    "target": t.target,
                    "clean p": t.clean_prob,
                    "corrupted p": t.corrupted_prob,
                    "best layer": t.best_layer,
                }
                for t in traces
            ],
        )
    )
    if all("mlp" in t.grids for t in traces):
        section.figures.append(("trace_mlp_effect", mlp_effect_figure(traces, best)))
    complete = [t for t in traces if not any(np.isnan(g).all(axis=1).any() for g in t.grids.values())]
    for t in complete[:HEATMAPS]:  # traces of the last subject token alone have no map to draw
        section.figures.append((f"trace_{t.case_id}", trace_heatmaps(t)))
    return section


def neurons_per_layer_figure(run: KNRun) -> Figure:
    """Refined knowledge neurons per layer, stacked by relation."""
    rows = run.facts
    layers = np.arange(run.layers)
    relations = sorted({r.relation for r in rows})
    fig = Figure(figsize=(7.5, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    bottom = np.zeros(len(layers))
    for relation in relations:
        counts = np.zeros(len(layers))
        for r in rows:
            if r.relation == relation:
                for layer, _, _ in r.neurons:
                    counts[layer] += 1
        ax.bar(layers, counts, bottom=bottom, label=_short(relation))
        bottom += counts
    ax.set_xlabel("layer")
    ax.set_ylabel("refined neurons (all facts)")
    ax.set_title(f"Knowledge neurons per layer ({len(rows)} facts)")
    if len(relations) <= 12:
        ax.legend(fontsize=7, ncols=2)
    return fig


def _short(text: str, n: int = 28) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def neurons_section(report: Report) -> Section:
    run = KNRun.from_dict(report.results)
    rows, m = run.facts, run.metrics
    section = Section("Knowledge neurons (integrated gradients)")
    c = config_from_dict(KNConfig, report.config)
    section.paragraphs.append(
        f"Dai et al. (2022) attribution at the last prompt token, {c.steps} left-Riemann steps, zero baseline; "
        f"coarse set > {c.coarse} × the maximum over layers, refined set kept by ≥ {c.share:.0%} of a fact's "
        f"prompts, relation neurons shared by ≥ {c.relation_share:.0%} of a relation's facts. "
        f"Mean {m.mean_neurons:.1f} refined neurons per fact (median {m.median_neurons:.0f}); "
        f"{m.facts_without_neurons} facts have none."
    )
    section.tables.append(
        (
            "per fact (top neurons as layer:index)",
            [
                {
                    "case_id": r.case_id,
                    "relation": _short(r.relation),
                    "target": r.target,
                    "P(target)": float(np.mean(r.probabilities)),
                    "neurons": len(r.neurons),
                    "top": ", ".join(f"{n[0]}:{n[1]}" for n in r.neurons[:4]),
                }
                for r in rows
            ],
        )
    )
    relations = run.relations
    section.tables.append(
        (
            "relation neurons (excluded before knowledge-neuron edits)",
            [
                {
                    "relation": _short(k),
                    "neurons": len(v),
                    "examples": ", ".join(f"{n[0]}:{n[1]}" for n in v[:5]),
                }
                for k, v in sorted(relations.items())
            ],
        )
    )
    sharing = run.sharing
    section.tables.append(
        (
            "fact–neuron graph",
            [
                {
                    "facts": sharing.facts,
                    "neurons": sharing.neurons,
                    "shared neurons": sharing.shared_neurons,
                    "pairs sharing": len(sharing.pairs_sharing),
                    "same-relation pairs sharing": sharing.same_relation_share_any,
                    "cross-relation pairs sharing": sharing.cross_relation_share_any,
                }
            ],
        )
    )
    section.figures.append(("neurons_per_layer", neurons_per_layer_figure(run)))
    return section


def intervention_figure(method: str, result: InterventionResult) -> Figure:
    """Relative change of P(target): own neurons, random neurons, control facts."""
    facts = [f for f in result.facts if f.neurons]
    groups = [
        ("own neurons", [f.own_change for f in facts]),
        ("random neurons", [f.random_change for f in facts]),
        ("control facts", [f.control_change for f in facts if f.control_change is not None]),
    ]
    fig = Figure(figsize=(5.5, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    rng = np.random.default_rng(0)  # jitter only
    for i, (_name, values) in enumerate(groups):
        ax.bar(i, np.mean(values) if values else 0, color=("tab:red", "tab:gray", "tab:blue")[i], alpha=0.6)
        ax.scatter(i + rng.uniform(-0.2, 0.2, len(values)), values, s=10, color="black")
    ax.set_xticks(range(3), [g[0] for g in groups])
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("relative change of P(target)")
    ax.set_title(f"{method}: neurons × {0 if method == 'suppress' else result.config.factor}")
    return fig


def intervention_section(report: Report) -> Section:
    result = InterventionResult.from_dict(report.results)
    s = result.summary()
    section = Section(f"{report.method.capitalize()} knowledge neurons")
    section.paragraphs.append(
        f"{s.facts} facts with neurons. Mean relative change of P(target) with a fact's own neurons "
        f"{s.own_change:+.1%}, with as many random neurons in the same layers {s.random_change:+.1%}, "
        f"and on unrelated control facts {s.control_change:+.1%}."
        if s.facts
        else "No fact had refined neurons."
    )
    section.tables.append(("summary", [s.to_dict()]))
    if s.facts:
        section.figures.append((f"{report.method}_effect", intervention_figure(report.method, result)))
    return section


SECTIONS = {
    "trace": trace_section,
    "neurons": neurons_section,
    "suppress": intervention_section,
    "enhance": intervention_section,
}


def write_fact_report(folder: str | Path) -> tuple[Path, Path]:
    folder = Path(folder)
    sections = []
    model = None
    for method, build in SECTIONS.items():
        report = _load(folder, method)
        if report is not None:
            model = model or report.model_id
            sections.append(build(report))
    return write_report(folder, f"memloc facts report: {model or folder.name}", sections)
