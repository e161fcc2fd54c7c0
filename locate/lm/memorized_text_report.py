"""Report sections for memorized text: extraction, canary exposure and the localizer comparison.

A memorized-text folder is any folder the commands wrote into: every
``extraction.json`` (`locate extractable --out`), every ``*exposure*.json``
(`locate exposure --out`) and every ``memorized_neurons.json`` (`locate
memorized-neurons --out`) below it is read back into its type, labelled by its path
relative to the folder. The page itself is assembled in ``edit/memorized_text_page.py``,
which adds the unlearning results.

    found = MemorizedTextResults.find(Path("runs/real"))
    sections = text_sections(found)
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from memloc.core.dataclass_files import load_dataclass, read_dataclass_json
from memloc.core.render import Section
from memloc.locate.lm.exposure import ExposureResult
from memloc.locate.lm.extraction import ExtractionResult
from memloc.locate.lm.extraction_files import read_extraction
from memloc.locate.lm.memorized.benchmark_files import DEL, INJ, del_figure, inj_figure
from memloc.locate.lm.memorized.drop import DelResult
from memloc.locate.lm.memorized.files import STEM, load_memorized_neurons
from memloc.locate.lm.memorized.inject import InjResult
from memloc.locate.lm.memorized.run import MemorizedNeurons

DEPTH = 3  # how far below the folder results are looked for


def _one_axes() -> tuple[Figure, Axes]:
    fig = Figure(figsize=(6.5, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def results_below(folder: Path, pattern: str) -> list[Path]:
    """Files matching ``pattern`` at most DEPTH levels below ``folder``, sorted."""
    found = [p for p in sorted(folder.rglob(pattern)) if len(p.relative_to(folder).parts) <= DEPTH]
    return [p for p in found if p.is_file()]


def result_label(folder: Path, path: Path, *, by_parent: bool) -> str:
    """A result's name on the page: its folder's (or, ``by_parent=False``, its own) path below ``folder``."""
    where = path.parent if by_parent else path.with_suffix("")
    return str(where.relative_to(folder)) if where != folder else "."


def _is_exposure(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "canaries" in data and "config" in data


@dataclass(frozen=True)
class MemorizedTextResults:
    """Every memorized-text result below a folder, by label."""

    extraction: tuple[tuple[str, ExtractionResult], ...]
    exposure: tuple[tuple[str, ExposureResult], ...]
    localizers: tuple[tuple[str, MemorizedNeurons], ...]
    inj: tuple[tuple[str, InjResult], ...] = ()
    dele: tuple[tuple[str, DelResult], ...] = ()

    @classmethod
    def find(cls, folder: Path) -> MemorizedTextResults:
        return cls(
            extraction=tuple(
                (result_label(folder, p, by_parent=True), read_extraction(p))
                for p in results_below(folder, "extraction.json")
            ),
            exposure=tuple(
                (result_label(folder, p, by_parent=False), read_dataclass_json(ExposureResult, p))
                for p in results_below(folder, "*exposure*.json")
                if _is_exposure(p)
            ),
            localizers=tuple(
                (result_label(folder, p, by_parent=True), load_memorized_neurons(p.parent))
                for p in results_below(folder, f"{STEM}.json")
            ),
            inj=tuple(
                (result_label(folder, p, by_parent=True), load_dataclass(InjResult, p.with_suffix("")))
                for p in results_below(folder, f"{INJ}.json")
            ),
            dele=tuple(
                (result_label(folder, p, by_parent=True), load_dataclass(DelResult, p.with_suffix("")))
                for p in results_below(folder, f"{DEL}.json")
            ),
        )

    def empty(self) -> bool:
        return not (self.extraction or self.exposure or self.localizers or self.inj or self.dele)


def extraction_section(found: MemorizedTextResults) -> Section:
    section = Section("Extraction (discoverable memorization)")
    section.paragraphs.append(
        "A document is extracted when the greedy n-token continuation of its k-token prefix equals "
        "its own text (Carlini et al. 2023); exact memorization is the share of suffix tokens whose "
        "teacher-forced argmax is true (Tirumala et al. 2022)."
    )
    rows = [{"run": label, **row} for label, result in found.extraction for row in result.rows()]
    section.tables.append(("extraction by run and prefix length", rows))
    section.figures.append(("extraction", _extraction_figure(found)))
    section.captions["extraction"] = "Extraction rate and exact memorization per run, at the longest prefix."
    return section


def _extraction_figure(found: MemorizedTextResults) -> Figure:
    fig, ax = _one_axes()
    labels = [label for label, _ in found.extraction]
    x = np.arange(len(labels))
    longest = [r.config.longest for _, r in found.extraction]
    ax.bar(
        x - 0.2,
        [r.rate(k) for (_, r), k in zip(found.extraction, longest, strict=True)],
        0.4,
        label="extracted",
    )
    exact = [r.exact_memorization(k) for (_, r), k in zip(found.extraction, longest, strict=True)]
    ax.bar(x + 0.2, exact, 0.4, label="exact memorization")
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("share")
    ax.legend(fontsize=8)
    return fig


def exposure_section(found: MemorizedTextResults) -> Section:
    section = Section("Canary exposure")
    section.paragraphs.append(
        "Exposure = log2|R| - log2 rank of the secret among all candidates of its template, ranked by "
        "log-perplexity (Carlini et al. 2019); the maximum log2|R| means the secret ranks first."
    )
    rows = [{"run": label, **row} for label, result in found.exposure for row in result.rows()]
    section.tables.append(("exposure by canary", rows))
    fig, ax = _one_axes()
    for label, result in found.exposure:
        ax.plot([c.repeats for c in result.canaries], [c.exposure for c in result.canaries], "o", label=label)
    sizes = {c.space_size for _, r in found.exposure for c in r.canaries}
    for size in sizes:
        ax.axhline(np.log2(size), color="gray", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("times the canary was in the training corpus")
    ax.set_ylabel("exposure (bits)")
    ax.legend(fontsize=8)
    section.figures.append(("exposure", fig))
    section.captions["exposure"] = "Exposure against repetitions; the dotted line is log2|R|."
    return section


def localizer_section(found: MemorizedTextResults) -> Section:
    section = Section("Localizers of memorized text")
    section.paragraphs.append(
        "Each localizer ranks every MLP neuron (mlp.post) for each memorized sequence (Chang et al. 2024); "
        "the tables use each run's budget. Overlap is the Jaccard index of two top sets."
    )
    section.tables.append(
        ("one row per localizer run", [_localizer_row(label, run) for label, run in found.localizers])
    )
    pairs = _method_overlap(found.localizers)
    if pairs:
        section.tables.append(("agreement between runs on the same texts (mean Jaccard of top sets)", pairs))
    section.figures.append(("localizer_layers", _layer_figure(found.localizers)))
    section.captions["localizer_layers"] = "Share of each run's top neurons per layer, over its sequences."
    return section


def _localizer_row(label: str, run: MemorizedNeurons) -> dict:
    counts = np.array([s.per_layer for s in run.sequences], dtype=float).sum(0)
    n = len(run.sequences)
    off = run.overlap[~np.eye(n, dtype=bool)] if n > 1 else np.array([np.nan])
    return {
        "run": label,
        "method": run.method,
        "sequences": n,
        "budget": run.budget,
        "neurons per sequence": len(run.sequences[0].top),
        "busiest layer": int(np.argmax(counts)),
        "share in it": round(float(counts.max() / counts.sum()), 3),
        "overlap between sequences": round(float(np.mean(off)), 3),
    }


def _method_overlap(runs: tuple[tuple[str, MemorizedNeurons], ...]) -> list[dict]:
    rows = []
    for (a, ra), (b, rb) in itertools.combinations(runs, 2):
        tops_b = {s.text: set(s.top) for s in rb.sequences}
        shared = [(set(s.top), tops_b[s.text]) for s in ra.sequences if s.text in tops_b]
        if shared:
            jaccard = [len(x & y) / len(x | y) for x, y in shared]
            rows.append(
                {
                    "run a": a,
                    "run b": b,
                    "texts": len(shared),
                    "mean Jaccard": round(float(np.mean(jaccard)), 3),
                }
            )
    return rows


def _layer_figure(runs: tuple[tuple[str, MemorizedNeurons], ...]) -> Figure:
    fig, ax = _one_axes()
    for label, run in runs:
        counts = np.array([s.per_layer for s in run.sequences], dtype=float).sum(0)
        ax.plot(np.arange(len(counts)), counts / counts.sum(), marker=".", label=f"{label} ({run.method})")
    ax.set_xlabel("layer")
    ax.set_ylabel("share of top neurons")
    ax.legend(fontsize=8)
    return fig


def benchmark_section(found: MemorizedTextResults) -> Section:
    """MemPi's INJ (recall of planted neurons) and DEL (accuracy drops) tables, random baseline last."""
    section = Section("Localizer benchmarks (INJ and DEL)")
    section.paragraphs.append(
        "INJ plants new sequences in a known random set of neurons (only their down-projection columns "
        "train) and scores each localizer's recall of that set at its budget. DEL zeroes each memorized "
        "sequence's top neurons and measures the token-accuracy drop on it, on the other memorized "
        "sequences and on plain text (Chang et al. 2024). The last row of each is a random localizer."
    )
    for label, inj in found.inj:
        section.tables.append((f"INJ recall ({label})", inj.table()))
        stem = f"inj_{len(section.figures)}"
        figure = inj_figure(inj)
        FigureCanvasAgg(figure)
        section.figures.append((stem, figure))
        section.captions[stem] = f"INJ recall of the planted neurons per localizer ({label})."
    for label, dele in found.dele:
        section.tables.append((f"DEL accuracy drops ({label})", dele.table()))
        stem = f"del_{len(section.figures)}"
        figure = del_figure(dele)
        FigureCanvasAgg(figure)
        section.figures.append((stem, figure))
        section.captions[stem] = (
            f"DEL: accuracy drop on the target, other memorized sequences, plain text ({label})."
        )
    return section


def text_sections(found: MemorizedTextResults) -> list[Section]:
    """The sections for whatever was found, in the order of the loop: find, then localize."""
    sections = []
    if found.extraction:
        sections.append(extraction_section(found))
    if found.exposure:
        sections.append(exposure_section(found))
    if found.localizers:
        sections.append(localizer_section(found))
    if found.inj or found.dele:
        sections.append(benchmark_section(found))
    return sections
