"""Cumulative sample gradient, CSG (Ravikumar et al. 2025, "Towards Memorization
Estimation: Fast, Formal and Free"): the gradient twin of the cumulative sample loss.

    CSG_i = Σ_t ||∇_x L(f_t(x_i), y_i)||²₂

over the run's trained checkpoints t (epochs 1..E, every ``stride``-th, the last always
included), with y_i the given label the run trained on. It needs only the checkpoints:
no retraining. Gradients are taken in eval mode, where the examples of a batch are
independent, so the gradient of the batch's summed loss holds each example's own.
Larger means "more likely memorized".

Example::

    result = cumulative_sample_gradient(RunFolder.open("runs/cnn"), torch.device("cpu"), CSGConfig())
    result.auroc, result.csg[result.noisy].mean()
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from memloc.core.classifier.runs import RunFolder
from memloc.core.classifier.splits import RunData
from memloc.core.errors import MemlocError
from memloc.core.progress import Progress
from memloc.core.validation import at_least
from memloc.locate.classifier.scores import auroc
from torch import nn


@dataclass(frozen=True)
class CSGConfig:
    stride: int = 1  # every stride-th trained epoch (the last one always)
    batch_size: int = 256

    def __post_init__(self) -> None:
        at_least(self, 1, "stride", "batch_size")

    def epochs_of(self, trained: Iterable[int]) -> list[int]:
        """The checkpoints summed over, from a run's trained epochs (epoch 0, the init, excluded)."""
        epochs = sorted(e for e in trained if e >= 1)
        if not epochs:
            raise MemlocError(
                "CSG needs at least one trained checkpoint; the run has only its initialization"
            )
        chosen = epochs[self.stride - 1 :: self.stride]
        return chosen if chosen and chosen[-1] == epochs[-1] else [*chosen, epochs[-1]]


@dataclass(frozen=True)
class CSGResult:
    epochs: tuple[int, ...]  # the checkpoints summed over
    auroc: float  # of CSG at flagging the noisy examples (NaN when the run has one kind only)
    csg: np.ndarray = field(compare=False, repr=False)  # (N,) float64
    per_epoch: np.ndarray = field(compare=False, repr=False)  # (len(epochs), N) squared norms
    noisy: np.ndarray = field(compare=False, repr=False)  # (N,) bool


def input_gradient_norms(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256
) -> np.ndarray:
    """||∇_x L(f(x_i), y_i)||² per example, in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    norms = []
    try:
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].detach().requires_grad_(True)
            loss = F.cross_entropy(model(xb).float(), y[start : start + batch_size], reduction="sum")
            (grad,) = torch.autograd.grad(loss, xb)
            norms.append(grad.flatten(1).double().pow(2).sum(1))
    finally:
        model.train(was_training)
    return torch.cat(norms).cpu().numpy()


def cumulative_sample_gradient(
    run: RunFolder,
    device: torch.device,
    config: CSGConfig,
    *,
    progress: Progress | None = None,
) -> CSGResult:
    """CSG of every training example of ``run`` on its given labels, from its checkpoints."""
    epochs = config.epochs_of(run.epochs())
    data = RunData.load(run, device)
    rows = []
    for i, epoch in enumerate(epochs):
        model, _ = run.load_model(epoch)
        rows.append(input_gradient_norms(model.to(device), data.x_train, data.given, config.batch_size))
        if progress:
            progress(i + 1, len(epochs), f"epoch {epoch}")
    per_epoch = np.stack(rows)
    csg = per_epoch.sum(0)
    noisy = data.labels.mask
    quality = auroc(csg, noisy) if noisy.any() and not noisy.all() else float("nan")
    return CSGResult(tuple(epochs), quality, csg, per_epoch, noisy)
