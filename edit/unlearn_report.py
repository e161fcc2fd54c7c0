"""The unlearning section of the memorized-text page: before/after of every `edit unlearn` run found.

section = unlearn_section(find_unlearn_reports(Path("runs/real")))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from memloc.core.dataclass_files import load_dataclass
from memloc.core.render import Section
from memloc.edit.unlearn_session import REPORT_STEM, UnlearnReport
from memloc.locate.lm.memorized_text_report import result_label, results_below


def find_unlearn_reports(folder: Path) -> tuple[tuple[str, UnlearnReport], ...]:
    """Every unlearn.json (+ .npz) below ``folder``, labelled by its folder's relative path."""
    return tuple(
        (result_label(folder, path, by_parent=True), load_dataclass(UnlearnReport, path.with_suffix("")))
        for path in results_below(folder, f"{REPORT_STEM}.json")
        if path.with_suffix(".npz").is_file()
    )


def _summary_row(label: str, report: UnlearnReport) -> dict:
    before, after = report.before, report.after
    row: dict = {
        "run": label,
        "localizer": report.config.method,
        "budget": report.config.budget,
        "neurons": len(report.neurons),
        "extraction before": round(before.memorization.extraction_rate, 3),
        "extraction after": round(after.memorization.extraction_rate, 3),
        "exact mem. before": round(before.memorization.exact_memorization, 3),
        "exact mem. after": round(after.memorization.exact_memorization, 3),
    }
    if before.exposure:
        row["mean exposure before"] = round(float(np.mean(before.exposure)), 2)
        row["mean exposure after"] = round(float(np.mean(after.exposure)), 2)
    if before.perplexity is not None and after.perplexity is not None:
        row["held-out ppl before"] = round(before.perplexity, 2)
        row["held-out ppl after"] = round(after.perplexity, 2)
    row["fluency before"] = round(before.fluency, 3)
    row["fluency after"] = round(after.fluency, 3)
    row["undo bit-exact"] = report.undone_hash == report.base_hash
    return row


def _figure(reports: tuple[tuple[str, UnlearnReport], ...]) -> Figure:
    fig = Figure(figsize=(7.5, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    memorized, exposure = fig.subplots(1, 2)
    x = np.arange(len(reports))
    labels = [f"{label}\n({r.config.method})" for label, r in reports]
    for offset, side, colour in ((-0.2, "before", "tab:gray"), (0.2, "after", "tab:red")):
        values = [getattr(r, side).memorization.exact_memorization for _, r in reports]
        memorized.bar(x + offset, values, 0.4, color=colour, label=side)
        exposures = [
            float(np.mean(getattr(r, side).exposure)) if r.before.exposure else 0.0 for _, r in reports
        ]
        exposure.bar(x + offset, exposures, 0.4, color=colour, label=side)
    memorized.set_title("exact memorization of the sequences")
    memorized.set_ylim(0, 1)
    exposure.set_title("mean canary exposure (bits)")
    for ax in (memorized, exposure):
        ax.set_xticks(x, labels, fontsize=7)
        ax.legend(fontsize=8)
    return fig


def unlearn_section(reports: tuple[tuple[str, UnlearnReport], ...]) -> Section:
    section = Section("Unlearning")
    section.paragraphs.append(
        "Each run scaled the down-projection columns of its localizer's top neurons per sequence "
        "(scale 0 ablates) as an undoable edit, guarded by the collapse monitor; the ledger was undone "
        "and the weights hash compared with the base."
    )
    section.tables.append(("before and after unlearning", [_summary_row(label, r) for label, r in reports]))
    section.figures.append(("unlearning", _figure(reports)))
    section.captions["unlearning"] = (
        "Exact memorization and canary exposure before and after each unlearning run."
    )
    return section
