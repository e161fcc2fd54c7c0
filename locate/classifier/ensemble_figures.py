"""Figures of the subset-ensemble measures, built on matplotlib's Agg canvas (no display).

- `lira_roc_figure`: LiRA's pooled ROC curves on log–log axes with the chance line, as
  Carlini et al. 2022 plot them (their Fig. 1), so the low-FPR regime is visible;
- `in_out_histograms`: a per-example quantity over the in models against the out models
  (e.g. φ of a few examples), or any two groups of values (mem of noisy vs clean);
- `influence_grid`: the most influential (training image → test image) pairs, as in
  Feldman & Zhang 2020's Fig. 3.

Example::

    fig = lira_roc_figure(evaluate_lira(ensemble, LiraConfig()))
    fig.savefig("lira_roc.png")
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from memloc.core.errors import MemlocError
from memloc.locate.classifier.influence import InfluencePair
from memloc.locate.classifier.lira_attack import LiraResult

_LABELS = {
    "online": "online",
    "online_fixed": "online, fixed variance",
    "offline": "offline",
    "offline_fixed": "offline, fixed variance",
    "loss": "LOSS",
}


def lira_roc_figure(result: LiraResult, title: str = "LiRA, every model as target") -> Figure:
    """TPR against FPR on log–log axes, one curve per variant, AUC and TPR at 0.1% FPR in the legend."""
    fig = Figure(figsize=(5.2, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    low = min(float(v.fpr[0]) for v in result.variants)
    for v in result.variants:
        # a zero TPR has no place on a log axis; the curve starts where it leaves zero
        tpr = np.where(v.tpr > 0, v.tpr, np.nan)
        style = "--" if v.variant == "loss" else "-"
        label = f"{_LABELS.get(v.variant, v.variant)}  AUC {v.auc:.3f}, TPR@0.1% {100 * v.tpr_at_0_1pct:.1f}%"
        ax.plot(v.fpr, tpr, style, label=label)
    ax.plot([low, 1.0], [low, 1.0], ":", color="grey", label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(low, 1.0)
    ax.set_ylim(low, 1.0)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"{title} ({result.targets} targets)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def in_out_histograms(
    groups: Sequence[tuple[np.ndarray, np.ndarray]],
    titles: Sequence[str],
    *,
    labels: tuple[str, str] = ("in", "out"),
    xlabel: str = "φ",
    bins: int = 20,
) -> Figure:
    """One panel per (first, second) pair of value arrays, overlaid histograms on shared bins.

    For φ of example i: ``(phi[inside[:, i], i], phi[~inside[:, i], i])``; for memorization
    split by noise: ``[(mem[noisy], mem[~noisy])]`` with ``labels=("noisy", "clean")``.
    """
    if len(groups) != len(titles) or not groups:
        raise MemlocError("in_out_histograms needs one title per group and at least one group")
    fig = Figure(figsize=(3.0 * len(groups) + 0.4, 2.8), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, (first, second), title in zip(
        fig.subplots(1, len(groups), squeeze=False)[0], groups, titles, strict=True
    ):
        both = np.concatenate([np.ravel(first), np.ravel(second)])
        edges = np.histogram_bin_edges(both[np.isfinite(both)], bins=bins)
        ax.hist(np.ravel(first), bins=edges, alpha=0.6, label=f"{labels[0]} ({np.size(first)})")
        ax.hist(np.ravel(second), bins=edges, alpha=0.6, label=f"{labels[1]} ({np.size(second)})")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=7)
    return fig


def _picture(images: np.ndarray, index: int, shape: tuple[int, ...] | None) -> np.ndarray:
    image = np.asarray(images[index], dtype=np.float64)
    if shape is not None:
        image = image.reshape(shape)
    if image.ndim == 3:  # (C, H, W): one channel shows grey, three show colour
        image = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
    if image.ndim not in (2, 3):
        raise MemlocError(f"an image of shape {image.shape} cannot be shown; pass image_shape, e.g. (8, 8)")
    span = image.max() - image.min()
    return (image - image.min()) / span if span > 0 else np.zeros_like(image)


def influence_grid(
    pairs: Sequence[InfluencePair],
    train_images: np.ndarray,
    test_images: np.ndarray,
    *,
    image_shape: tuple[int, ...] | None = None,
    given: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    columns: int = 4,
) -> Figure:
    """Each pair as two pictures side by side (train → test), titled with influence and mem.

    Images are (N, C, H, W), (N, H, W) or flat (N, D) with ``image_shape`` (e.g. (8, 8) for digits).
    """
    if not pairs:
        raise MemlocError("no influence pairs to show; lower the filter thresholds or raise top")
    rows = -(-len(pairs) // columns)
    fig = Figure(figsize=(2.3 * min(columns, len(pairs)), 1.45 * rows + 0.3), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 2 * min(columns, len(pairs)), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for n, pair in enumerate(pairs):
        left, right = axes[n // columns, 2 * (n % columns)], axes[n // columns, 2 * (n % columns) + 1]
        left.imshow(_picture(train_images, pair.train, image_shape), cmap="gray")
        right.imshow(_picture(test_images, pair.test, image_shape), cmap="gray")
        train_label = f" y={int(given[pair.train])}" if given is not None else ""
        test_label = f" y={int(test_labels[pair.test])}" if test_labels is not None else ""
        left.set_title(f"train {pair.train}{train_label}\nmem {pair.mem:.2f}", fontsize=7)
        right.set_title(f"→ test {pair.test}{test_label}\ninfl {pair.influence:.2f}", fontsize=7)
    return fig
