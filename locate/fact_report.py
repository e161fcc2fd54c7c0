"""The report of a facts folder: whatever `memloc locate trace|neurons|suppress|enhance`
left there, as Markdown and one self-contained HTML page.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from memloc.core.render import Section, write_report
from memloc.core.report import Report

from .tracing import FactTrace
from .tracing_figures import trace_heatmaps

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
    ax.axhline(np.mean([t.corrupted_prob for t in traces]), color="gray", ls=":", label="corrupted (mean)")
    if best is not None:
        ax.axvline(best, color="black", ls="--", label=f"best_layer = {best}")
    ax.set_xlabel("layer (center of the restored MLP window)")
    ax.set_ylabel("P(target)")
    ax.set_title("MLP indirect effect at the subject's last token")
    ax.legend(fontsize=8)
    return fig


def trace_section(report: Report) -> Section:
    traces = [FactTrace.from_dict(f) for f in report.results["facts"]]
    best = report.results["best_layer"]
    section = Section("Causal tracing")
    section.paragraphs.append(
        f"{len(traces)} facts, {report.config['samples']} corrupted copies each (noise "
        f"{report.config['noise']}×σ of the embeddings, seed {report.config['seed']}). The automatic edit layer "
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
    for t in traces[:HEATMAPS]:
        section.figures.append((f"trace_{t.case_id}", trace_heatmaps(t)))
    return section


SECTIONS = {"trace": trace_section}


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
