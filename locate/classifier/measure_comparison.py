"""How memorization measures agree: each one's AUROC at flagging the mislabeled examples,
and the Spearman rank correlation of every pair over the training examples.

The survey "Memorization in Deep Learning" (Wei et al. 2025) asks whether the cheap
one-run proxies (CSL, learning time, curvature, CSG) rank examples as the retraining
gold standard (Feldman–Zhang memorization) does; the row of the Spearman matrix at
``fz_mem`` answers it.

Example::

    cmp = compare_measures({"fz_mem": mem, "csl": csl}, noisy)
    cmp.auroc["fz_mem"], cmp.correlation("fz_mem", "csl")
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from memloc.core.errors import MemlocError
from memloc.locate.classifier.scores import auroc
from scipy.stats import spearmanr


@dataclass(frozen=True)
class MeasureComparison:
    """``spearman[a, b]`` correlates measures ``names[a]`` and ``names[b]``; ``auroc`` is None-free only
    when the noise mask is known (else every AUROC is NaN)."""

    names: tuple[str, ...]
    auroc: dict[str, float]
    spearman: np.ndarray = field(compare=False, repr=False)

    def correlation(self, a: str, b: str) -> float:
        return float(self.spearman[self.names.index(a), self.names.index(b)])

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "auroc": dict(self.auroc),
            "spearman": [[float(v) for v in row] for row in self.spearman],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MeasureComparison:
        return cls(tuple(d["names"]), dict(d["auroc"]), np.asarray(d["spearman"], dtype=float))


def compare_measures(scores: Mapping[str, np.ndarray], noisy: np.ndarray | None) -> MeasureComparison:
    """AUROC of each per-example score (larger = more likely memorized) and their Spearman matrix."""
    names = tuple(scores)
    if not names:
        raise MemlocError("no measures to compare")
    lengths = {len(v) for v in scores.values()}
    if len(lengths) != 1:
        raise MemlocError(f"the measures cover different numbers of examples: {sorted(lengths)}")
    stacked = np.stack([np.asarray(scores[n], dtype=float) for n in names], axis=1)
    if len(names) == 1:
        rho = np.ones((1, 1))
    elif len(names) == 2:  # spearmanr gives a scalar for two columns
        r = float(spearmanr(stacked[:, 0], stacked[:, 1], nan_policy="omit").statistic)
        rho = np.array([[1.0, r], [r, 1.0]])
    else:
        rho = spearmanr(stacked, nan_policy="omit").statistic
    if noisy is not None and noisy.any() and not noisy.all():
        aurocs = {n: auroc(stacked[:, i], noisy) for i, n in enumerate(names)}
    else:
        aurocs = dict.fromkeys(names, float("nan"))
    return MeasureComparison(names, aurocs, np.asarray(rho, dtype=float))


def spearman_figure(comparison: MeasureComparison) -> Figure:
    """A heat map of the Spearman matrix, each cell labeled with its value."""
    n = len(comparison.names)
    fig = Figure(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    ax = fig.subplots()
    image = ax.imshow(comparison.spearman, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(n), comparison.names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), comparison.names, fontsize=8)
    for a in range(n):
        for b in range(n):
            value = comparison.spearman[a, b]
            ax.text(
                b,
                a,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=6.5,
                color="white" if abs(value) > 0.6 else "black",
            )
    fig.colorbar(image, ax=ax, shrink=0.8, label="Spearman ρ")
    fig.tight_layout()
    return fig
