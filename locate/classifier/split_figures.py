"""Figures of the second-split and feature measures (matplotlib Figures, Agg; nothing is shown).

- `ssft_curves`: the fraction of the first half still correct per fine-tuning epoch,
  noisy against clean (Maini et al. 2022, Figure 1's forgetting curves).
- `forgetting_rate_curve`: offline LiRA's AUC and TPR at low FPR per fine-tuning epoch.
- `nc1_curves`: NC1 per layer group over the checkpoints.
- `benign_bars`: the kNN probe's accuracy per layer group, initialization against final.

Example::

    fig = ssft_curves(second_split_forgetting(run, device, SecondSplitConfig()))
    fig.savefig("ssft.png")
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from memloc.locate.classifier.benign import BenignResult
from memloc.locate.classifier.neural_collapse import CollapseResult
from memloc.locate.classifier.second_split import SecondSplitResult


def _figure(width: float = 5.0, height: float = 3.4) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def ssft_curves(result: SecondSplitResult) -> Figure:
    """Fraction of the first half correct on its given label after each fine-tuning epoch."""
    fig = _figure()
    ax = fig.add_subplot()
    epochs = np.arange(result.config.finetune_epochs + 1)
    for name, mask, color in (("clean", ~result.noisy, "tab:blue"), ("noisy", result.noisy, "tab:red")):
        if mask.any():
            ax.plot(
                epochs, result.still_correct(mask), marker="o", color=color, label=f"{name} ({mask.sum()})"
            )
    ax.set(xlabel="fine-tuning epoch on the second half", ylabel="fraction correct", ylim=(-0.02, 1.02))
    ax.set_title("Second-split forgetting")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    return fig


def forgetting_rate_curve(result: SecondSplitResult) -> Figure:
    """The attack's AUC and TPR at its FPR per fine-tuning epoch, one line per direction."""
    fig = _figure(8.0)
    auc_ax, tpr_ax = fig.subplots(1, 2)
    if result.forgetting is None:
        fig.suptitle("no ensemble given: no forgetting rate")
        return fig
    for d, curve in enumerate(result.forgetting):
        epochs = np.arange(len(curve.auc))
        label = ("A then B", "B then A")[d]
        auc_ax.plot(epochs, curve.auc, marker="o", label=label)
        tpr_ax.plot(epochs, curve.tpr, marker="o", label=label)
    fpr = result.forgetting[0].fpr
    auc_ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    tpr_ax.axhline(fpr, color="grey", lw=0.8, ls="--")
    auc_ax.set(xlabel="fine-tuning epoch", ylabel="offline LiRA AUC", title="Forgetting rate: AUC")
    tpr_ax.set(xlabel="fine-tuning epoch", ylabel=f"TPR at {fpr:g} FPR", title="Forgetting rate: TPR")
    for ax in (auc_ax, tpr_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    auc_ax.legend()
    return fig


def nc1_curves(result: CollapseResult) -> Figure:
    """NC1 per layer group over the checkpoints (log scale: it spans orders of magnitude)."""
    fig = _figure()
    ax = fig.add_subplot()
    for g, name in enumerate(result.groups):
        ax.plot(result.epochs, result.nc1[:, g], marker="o", label=name)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="NC1 = tr(Σ_W Σ_B⁺)/K", title="Within-class variability (true labels)")
    ax.legend()
    return fig


def benign_bars(result: BenignResult) -> Figure:
    """kNN-probe accuracy on the true labels per layer group, at the init and after training."""
    fig = _figure(max(4.0, 1.1 * len(result.layers) + 2))
    ax = fig.add_subplot()
    x = np.arange(len(result.layers))
    ax.bar(x - 0.2, [layer.init_accuracy for layer in result.layers], 0.4, label=f"epoch {result.init_epoch}")
    ax.bar(
        x + 0.2, [layer.final_accuracy for layer in result.layers], 0.4, label=f"epoch {result.final_epoch}"
    )
    ax.set_xticks(x, [layer.group for layer in result.layers])
    # The headroom above 1 keeps the legend off the bars.
    ax.set(
        ylabel="kNN probe test accuracy", ylim=(0, 1.18), title=f"Benign memorization (k={result.config.k})"
    )
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.legend(loc="upper center", ncol=2)
    return fig
