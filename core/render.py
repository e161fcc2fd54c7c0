"""Render report sections to Markdown (with PNG files) and one self-contained HTML page.

A section is a title, paragraphs, optional tables (lists of dicts) and optional
matplotlib figures. The HTML embeds figures as base64 PNGs, so the page is one file
that can be mailed or attached to a paper's supplement.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never open a window

from matplotlib.figure import Figure
from memloc.core.checkpoints import atomic_write, atomic_write_text


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, list[dict]]] = field(default_factory=list)
    figures: list[tuple[str, Figure]] = field(default_factory=list)  # (file stem, figure)
    captions: dict[str, str] = field(default_factory=dict)  # file stem -> sentence under the figure


def _write_bytes(tmp: Path, *, data: bytes) -> None:
    tmp.write_bytes(data)


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else str(value)


def _md_table(rows: list[dict]) -> str:
    if not rows:
        return "_(empty)_"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_md_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _md_cell(value: object) -> str:
    # A pipe or a newline (model generations hold both) would end the cell or the row.
    return _fmt(value).replace("|", "\\|").replace("\n", " ")


def _html_table(rows: list[dict]) -> str:
    if not rows:
        return "<p><em>(empty)</em></p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f2f2f2}
figure{margin:1em 0}figure img{max-width:100%}figcaption{color:#666;font-size:0.85em}
"""


def write_report(folder: str | Path, title: str, sections: list[Section]) -> tuple[Path, Path]:
    """Write ``report.md`` (+ ``figures/*.png``) and ``report.html`` into ``folder``."""
    folder = Path(folder)
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    md = [f"# {title}", ""]
    page = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        md += [f"## {section.title}", ""]
        page.append(f"<section><h2>{html.escape(section.title)}</h2>")
        for text in section.paragraphs:
            md += [text, ""]
            page.append(f"<p>{html.escape(text)}</p>")
        for caption, rows in section.tables:
            md += [f"**{caption}**", "", _md_table(rows), ""]
            page.append(f"<h3>{html.escape(caption)}</h3>{_html_table(rows)}")
        for stem, fig in section.figures:
            data = png_bytes(fig)
            caption = section.captions.get(stem, stem)
            atomic_write(folder / "figures" / f"{stem}.png", partial(_write_bytes, data=data))
            md += [f"![{caption}](figures/{stem}.png)", "", f"*{caption}*", ""]
            encoded = base64.b64encode(data).decode()
            page.append(
                f"<figure id='fig-{html.escape(stem)}'><img alt='{html.escape(stem)}' "
                f"src='data:image/png;base64,{encoded}'><figcaption>{html.escape(caption)}</figcaption></figure>"
            )
            fig.clf()
        page.append("</section>")
    page.append("</body></html>")
    md_path = atomic_write_text(folder / "report.md", "\n".join(md))
    html_path = atomic_write_text(folder / "report.html", "\n".join(page))
    return md_path, html_path
