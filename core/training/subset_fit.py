"""Training a classifier on a subset of its examples: the one definition every ensemble
member, second-split fine-tune and hold-out fine-tune follows.

Epoch e shuffles the subset with a generator seeded by (seed, e), splits it into
``steps_per_epoch`` nearly equal batches (``torch.tensor_split``) and takes one Adam
step per batch on the mean cross-entropy, with the warm-up-cosine schedule over all
steps. ``steps_per_epoch`` defaults to ceil(subset / batch_size); an ensemble fixes it
for all its members so that members of different subset sizes take the same steps,
which is what lets the batched trainer (core/ensemble/batched.py) equal this loop.

Example::

    fit(model, x, y, np.arange(500), FitConfig(epochs=20, batch_size=32, lr=1e-3, seed=3))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from memloc.core.errors import MemlocError
from memloc.core.progress import Progress
from memloc.core.training.schedule import check_finite_loss, epoch_generator, warmup_cosine
from memloc.core.validation import at_least, positive
from torch import nn


@dataclass(frozen=True)
class FitConfig:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        at_least(self, 1, "epochs", "batch_size")
        at_least(self, 0, "weight_decay", "seed")
        positive(self, "lr")

    def steps_for(self, examples: int) -> int:
        return max(1, math.ceil(examples / self.batch_size))


def epoch_batches(indices: torch.Tensor, seed: int, epoch: int, steps: int) -> tuple[torch.Tensor, ...]:
    """The batches of example indices of ``epoch`` (on the indices' device)."""
    perm = torch.randperm(len(indices), generator=epoch_generator(seed, epoch)).to(indices.device)
    return torch.tensor_split(indices[perm], steps)


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    indices: np.ndarray | torch.Tensor,
    config: FitConfig,
    *,
    steps_per_epoch: int | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    progress: Progress | None = None,
) -> nn.Module:
    """Train ``model`` in place on rows ``indices`` of (x, y); ``on_epoch(e, model)`` after each epoch.

    The model's device is the inputs' device; ``on_epoch`` finds the model in train mode
    and must leave it as it found it (`torch.no_grad` and `model.eval()` are its to undo).
    """
    idx = torch.as_tensor(np.asarray(indices) if not torch.is_tensor(indices) else indices)
    idx = idx.to(device=x.device, dtype=torch.long)
    if len(idx) == 0:
        raise MemlocError("a subset to train on holds no examples")
    steps = steps_per_epoch or config.steps_for(len(idx))
    total = steps * config.epochs
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    for epoch in range(1, config.epochs + 1):
        model.train()
        for i, batch in enumerate(epoch_batches(idx, config.seed, epoch, steps)):
            step = (epoch - 1) * steps + i
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine(config.lr, step, total)
            if len(batch):
                loss = F.cross_entropy(model(x[batch]).float(), y[batch])
                check_finite_loss(loss, epoch, i)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if progress:
                progress(step + 1, total, f"epoch {epoch}/{config.epochs}")
        if on_epoch:
            on_epoch(epoch, model)
    model.eval()
    return model
