"""Where an extraction run is stored: JSON of the result, the extracted documents, a figure.

``DIR/extraction.json`` holds the summary per prefix length and every document's result;
``DIR/extracted.jsonl`` one extracted document per line; with several prefix lengths,
``DIR/extraction_rate.png`` plots the rate against the prefix length.

Usage::

    paths = write_extraction(result, Path("out"))
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from memloc.core.dataclass_files import from_plain
from memloc.locate.lm.extraction import ExtractionResult

RESULT, EXTRACTED, FIGURE = "extraction.json", "extracted.jsonl", "extraction_rate.png"


def extraction_json(result: ExtractionResult) -> dict:
    return {
        "model": result.model,
        "config": asdict(result.config),
        "corpus_documents": result.corpus_documents,
        "skipped_short": result.skipped_short,
        "summary": result.rows(),
        "documents": [{**asdict(r), "extracted": r.extracted} for r in result.results],
    }


def read_extraction(path: Path) -> ExtractionResult:
    """The result `write_extraction` stored as ``path`` (an extraction.json), typed again."""
    data = json.loads(path.read_text(encoding="utf-8"))
    documents = [{k: v for k, v in row.items() if k != "extracted"} for row in data["documents"]]
    fields = ("config", "corpus_documents", "skipped_short", "model")
    return from_plain(ExtractionResult, {**{k: data[k] for k in fields}, "results": documents})


def rate_figure(result: ExtractionResult) -> Figure:
    """Extraction rate (and exact memorization) against the prefix length, as in Carlini et al. 2023."""
    prefixes = sorted(result.config.prefixes)
    figure = Figure(figsize=(5, 3.5))
    axes = figure.add_subplot()
    axes.plot(prefixes, [result.rate(k) for k in prefixes], marker="o", label="extracted (exact suffix)")
    axes.plot(
        prefixes, [result.exact_memorization(k) for k in prefixes], marker="s", label="exact memorization"
    )
    axes.set_xscale("log", base=2)
    axes.set_xticks(prefixes, [str(k) for k in prefixes])
    axes.set_ylim(0, 1)
    axes.set_xlabel("prefix length k (tokens)")
    axes.set_ylabel("share")
    axes.set_title(f"{result.model or 'model'}: suffix n = {result.config.suffix}")
    axes.legend(loc="upper left", frameon=False)
    figure.tight_layout()
    return figure


def write_extraction(result: ExtractionResult, out: Path) -> list[Path]:
    """Write the result files under ``out`` (created); returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / RESULT, out / EXTRACTED]
    written[0].write_text(json.dumps(extraction_json(result), indent=1) + "\n", encoding="utf-8")
    lines = [json.dumps(asdict(r)) for r in result.results if r.extracted]
    written[1].write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    if len(result.config.prefixes) > 1:
        figure = rate_figure(result)
        FigureCanvasAgg(figure)
        figure.savefig(out / FIGURE, dpi=120)
        written.append(out / FIGURE)
    return written
