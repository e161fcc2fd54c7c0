"""One page comparing the edit evaluations below a folder: methods side by side.

``memloc edit eval --out`` writes one ``eval_report.json`` per run. A folder holding
several (for example ``runs/seq/rome``, ``runs/seq/memit``, ``runs/seq/alphaedit``)
gets one page: a table of every run's scores after its edits, and, for sequential runs,
ES, PS, NS, fluency and retention against the number of edits with one line per run in
one figure, as AlphaEdit's Figure 1 draws it (Fang et al., ICLR 2025).

    folder = EditEvalFolder.find(Path("runs/seq"))
    if folder is not None:
        md, page = folder.write_report(Path("runs/seq/report"))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from memloc.core.errors import MemlocError
from memloc.core.render import Section, write_report
from memloc.core.report import Report
from memloc.edit.eval_report import EVAL_FILE, eval_section
from memloc.edit.evaluate import EvalResult
from memloc.locate.lm.memorized_text_report import result_label, results_below

SUMMARY = ("ES", "PS", "NS", "S", "fluency")
# (panel title, what it reads from a curve point); fluency gets the unedited model's line too.
CURVES = (
    ("ES", "es"),
    ("PS", "ps"),
    ("NS", "ns"),
    ("retention (ES of the first facts)", "retention_es"),
    ("fluency (n-gram entropy)", "fluency"),
)


def load_eval_result(path: Path) -> EvalResult:
    """The `EvalResult` stored in an ``eval_report.json``; a one-line error names a file that is not one."""
    report = Report.load(path)
    if report.method != "edit_eval":
        raise MemlocError(f"{path} is a {report.method!r} report, not an edit evaluation")
    try:
        return EvalResult.from_dict(report.results)
    except (KeyError, TypeError) as exc:
        raise MemlocError(f"{path} does not hold an edit evaluation this memloc reads ({exc})") from None


def _run_name(label: str, result: EvalResult) -> str:
    method = result.method or "edited folder"
    return method if label in (".", method) else f"{method} ({label})"


def summary_rows(results: Sequence[tuple[str, EvalResult]]) -> list[dict]:
    """One row per run: method, protocol, layers, and its scores after the edits."""
    rows = []
    for label, result in results:
        row: dict = {"run": label, "method": result.method or "-", "mode": result.mode, "facts": result.facts}
        row["layers"] = ",".join(map(str, result.layers)) if result.layers else "-"
        row["batch"] = result.batch_size  # sequential runs only
        for name in SUMMARY:
            value = result.post.get(name)
            row[name] = None if value is None else round(value, 3)
        before = result.pre.get("fluency")
        row["fluency before"] = None if before is None else round(before, 3)
        row["s/edit"] = round(result.seconds_per_edit, 2)
        rows.append(row)
    return rows


def curves_figure(results: Sequence[tuple[str, EvalResult]]) -> Figure:
    """ES, PS, NS, retention and fluency against facts edited, one line per sequential run."""
    fig = Figure(figsize=(14, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(CURVES))
    for (label, result), color in zip(results, _colors(len(results)), strict=True):
        edits = [point.edits for point in result.curve]
        for ax, (_, field) in zip(axes, CURVES, strict=True):
            values = [getattr(point, field) for point in result.curve]
            ax.plot(edits, [np.nan if v is None else v for v in values], marker="o", ms=3, color=color)
        before = result.pre.get("fluency")
        if before is not None:
            axes[-1].axhline(before, color=color, lw=0.8, ls=":")
        axes[0].plot([], [], color=color, label=_run_name(label, result))
    for ax, (title, field) in zip(axes, CURVES, strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("facts edited")
        if field != "fluency":
            ax.set_ylim(0, 1.05)
    axes[-1].plot([], [], color="black", lw=0.8, ls=":", label="unedited")
    axes[0].legend(fontsize=7)
    axes[-1].legend(fontsize=7)
    return fig


def _colors(n: int) -> list:
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]
    return [palette[i % len(palette)] for i in range(n)]


def comparison_section(results: Sequence[tuple[str, EvalResult]]) -> Section:
    """The table of every run and, when some are sequential, their curves in one figure."""
    section = Section("Edit evaluations compared")
    section.paragraphs.append(
        "Scores after each run's edits (ES efficacy, PS generalization, NS specificity, S their "
        "harmonic mean; Meng et al. 2022). Compare runs only under the same protocol and facts."
    )
    section.tables.append(("runs", summary_rows(results)))
    sequential = [(label, r) for label, r in results if r.curve]
    if sequential:
        protocols = sorted({r.protocol for _, r in sequential if r.protocol})
        section.paragraphs.extend(f"Protocol: {p}." for p in protocols)
        section.figures.append(("edit_curves_compared", curves_figure(sequential)))
    return section


@dataclass(frozen=True)
class EditEvalFolder:
    """Every edit evaluation below a folder (``eval_report.json``), read once, by label."""

    folder: Path
    results: tuple[tuple[str, EvalResult], ...]

    @classmethod
    def find(cls, folder: Path) -> EditEvalFolder | None:
        """The evaluations below ``folder``; None when it is not a folder or holds none."""
        if not folder.is_dir():
            return None
        paths = results_below(folder, EVAL_FILE)
        if not paths:
            return None
        found = tuple((result_label(folder, p, by_parent=True), load_eval_result(p)) for p in paths)
        return cls(folder, found)

    def write_report(self, out: Path) -> tuple[Path, Path]:
        """Write the page into ``out``: report.md (+ figures/) and report.html."""
        sections = [comparison_section(self.results)] + [eval_section(r, label) for label, r in self.results]
        return write_report(out, f"Edit evaluations: {self.folder.name}", sections)
