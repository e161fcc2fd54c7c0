"""Heat maps of causal traces, in the style of the ROME paper's Figure 1 (Meng et al. 2022).

One panel per restored kind: prompt tokens down the side (subject tokens marked
with '*'), layers along the bottom, colour = P(target) with that cell restored. The
figure is built on matplotlib's Agg canvas, so no display is ever needed.
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from memloc.locate.lm.tracing import FactTrace

_STYLE = {
    "hidden": ("Purples", "Restoring the hidden state", "single restored layer"),
    "mlp": ("Greens", "Restoring MLP outputs", "center of {w} restored MLP layers"),
    "attn": ("Reds", "Restoring attention outputs", "center of {w} restored attention layers"),
}


def token_labels(result: FactTrace) -> list[str]:
    """The prompt's tokens as printed on the y axis, subject tokens marked with '*'."""
    start, end = result.subject
    shown = [tok.strip() or repr(tok) for tok in result.tokens]
    return [f"{tok}*" if start <= i < end else tok for i, tok in enumerate(shown)]


def trace_heatmaps(result: FactTrace) -> Figure:
    """One heat map per traced kind of a fact's causal trace."""
    kinds = list(result.grids)
    n_tokens, n_layers = next(iter(result.grids.values())).shape
    fig = Figure(figsize=(max(3.2 * len(kinds) + 0.6, 5.0), 0.32 * n_tokens + 1.6), layout="constrained")
    FigureCanvasAgg(fig)
    labels = token_labels(result)
    for i, (ax, kind) in enumerate(zip(fig.subplots(1, len(kinds), squeeze=False)[0], kinds, strict=True)):
        cmap, title, xlabel = _STYLE[kind]
        grid = np.ma.masked_invalid(result.grids[kind])
        image = ax.pcolormesh(grid, cmap=cmap, vmin=min(grid.min(), result.corrupted_prob))
        ax.invert_yaxis()
        ax.set_yticks(np.arange(n_tokens) + 0.5, labels if i == 0 else [""] * n_tokens)
        step = max(1, n_layers // 6)
        ax.set_xticks(np.arange(0, n_layers, step) + 0.5, [str(i) for i in range(0, n_layers, step)])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel.format(w=result.window), fontsize=9)
        bar = fig.colorbar(image, ax=ax)
        bar.set_label(f"p({result.target.strip()})", fontsize=9)
    fig.suptitle(
        f"{result.prompt} → {result.target}\n"
        f"clean p={result.clean_prob:.3f}, corrupted p={result.corrupted_prob:.3f}",
        fontsize=9,
    )
    return fig
