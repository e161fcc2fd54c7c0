"""Where a memorized-neurons run is stored: the typed result, and a figure of where the neurons are.

``DIR/memorized_neurons.json`` + ``.npz`` hold the `MemorizedNeurons` (scores in the
.npz); ``DIR/neurons_per_layer.png`` shows, per sequence, how many of its top neurons
each layer holds, beside the overlap of the sequences' top sets.

    paths = write_memorized_neurons(run, Path("out"))
    again = load_memorized_neurons(Path("out"))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from memloc.core.dataclass_files import load_dataclass, save_dataclass
from memloc.locate.lm.memorized.run import MemorizedNeurons

STEM, FIGURE = "memorized_neurons", "neurons_per_layer.png"


def neurons_figure(run: MemorizedNeurons) -> Figure:
    """Left: top neurons per layer for each sequence (heat map). Right: Jaccard overlap of the top sets."""
    counts = np.array([s.per_layer for s in run.sequences], dtype=float)
    figure = Figure(figsize=(10, 3.8))
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [2.2, 1]})
    image = left.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    left.set_xlabel("layer")
    left.set_ylabel("memorized sequence")
    left.set_title(f"{run.method}: top {run.budget:.2%} neurons per layer")
    figure.colorbar(image, ax=left, label="neurons")
    shown = right.imshow(run.overlap, vmin=0, vmax=1, cmap="magma", interpolation="nearest")
    right.set_title("overlap of top sets (Jaccard)")
    right.set_xlabel("sequence")
    right.set_ylabel("sequence")
    figure.colorbar(shown, ax=right)
    figure.tight_layout()
    return figure


def write_memorized_neurons(run: MemorizedNeurons, out: Path) -> list[Path]:
    """Write the result pair and the figure under ``out`` (created); returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = list(save_dataclass(run, out / STEM))
    figure = neurons_figure(run)
    FigureCanvasAgg(figure)
    figure.savefig(out / FIGURE, dpi=120)
    return [*written, out / FIGURE]


def load_memorized_neurons(folder: Path) -> MemorizedNeurons:
    """The run `write_memorized_neurons` stored in ``folder``."""
    return load_dataclass(MemorizedNeurons, folder / STEM)
