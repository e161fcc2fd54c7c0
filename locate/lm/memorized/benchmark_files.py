"""Where MemPi's INJ and DEL results are stored: typed JSON (+ .npz), a Markdown table, a figure.

``DIR/inj.json``, ``DIR/inj.md`` and ``DIR/inj_recall.png`` for INJ; ``DIR/del.json``,
``DIR/del.md`` and ``DIR/del_drops.png`` for DEL. The JSON reads back with
``load_dataclass(InjResult, DIR / "inj")``.

    paths = write_inj(result, Path("out"))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from memloc.core.checkpoints import atomic_write_text
from memloc.core.dataclass_files import save_dataclass
from memloc.locate.lm.memorized.drop import DelResult
from memloc.locate.lm.memorized.inject import InjResult

INJ, DEL = "inj", "del"


def markdown_table(rows: list[dict]) -> str:
    """Rows as a Markdown table; floats with 3 decimals."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def inj_figure(result: InjResult) -> Figure:
    """INJ recall per localizer, the random baseline last (as MemPi's Table 2)."""
    figure = Figure(figsize=(5, 3.5))
    axes = figure.add_subplot()
    names = [r.method for r in result.rows]
    bars = axes.bar(names, [r.recall for r in result.rows], color=["C0"] * (len(names) - 1) + ["0.6"])
    axes.bar_label(bars, fmt="%.2f", fontsize="small")
    axes.set_ylim(0, 1.05)
    axes.tick_params(axis="x", labelrotation=20)
    axes.set_ylabel(f"recall of planted neurons at {result.budget:.2%}")
    axes.set_title(f"INJ: {len(result.planted.neurons)} sequences")
    figure.tight_layout()
    return figure


def del_figure(result: DelResult) -> Figure:
    """DEL accuracy drops per localizer: target, other memorized, plain text (as MemPi's Figure 3)."""
    figure = Figure(figsize=(6, 3.5))
    axes = figure.add_subplot()
    x = np.arange(len(result.rows))
    parts = (("target", "target_drop"), ("other memorized", "other_drop"), ("plain text", "plain_drop"))
    for i, (label, attr) in enumerate(parts):
        axes.bar(x + (i - 1) * 0.27, [getattr(r, attr) for r in result.rows], width=0.27, label=label)
    axes.set_xticks(x, [r.method for r in result.rows], rotation=20)
    axes.axhline(0, color="0.3", linewidth=0.8)
    axes.margins(y=0.25)  # room for the legend above the tallest bar
    axes.set_ylabel(f"token accuracy drop at {result.config.budget:.2%}")
    axes.set_title(f"DEL: {len(result.accuracy)} memorized sequences")
    axes.legend(frameon=False, ncol=3, loc="upper center", fontsize="small")
    figure.tight_layout()
    return figure


def write_inj(result: InjResult, out: Path) -> list[Path]:
    """Write the INJ files under ``out`` (created); returns the paths written."""
    return _write(out, INJ, result, result.table(), inj_figure(result), "inj_recall.png")


def write_del(result: DelResult, out: Path) -> list[Path]:
    """Write the DEL files under ``out`` (created); returns the paths written."""
    return _write(out, DEL, result, result.table(), del_figure(result), "del_drops.png")


def _write(out: Path, stem: str, result: object, rows: list[dict], figure: Figure, png: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = list(save_dataclass(result, out / stem))
    written.append(atomic_write_text(out / f"{stem}.md", markdown_table(rows)))
    FigureCanvasAgg(figure)
    figure.savefig(out / png, dpi=120)
    written.append(out / png)
    return written
