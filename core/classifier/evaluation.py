"""Batched per-example evaluation of classifiers."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CPU_CHUNK = 64

# Entered around each chunk's forward pass with the chunk's example positions in ``x``
# (on its device), for methods whose forward depends on the example (example-tied dropout).
ChunkContext = Callable[[torch.Tensor], AbstractContextManager]


@torch.no_grad()
def per_example(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 1024,
    context: ChunkContext | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy loss and predicted class of every example, in eval mode.

    ``batch_size`` is the most examples per forward pass; on the CPU passes take at
    most ``CPU_CHUNK``, since large batches of conv activations leave the cache and run
    slower (benchmarks/per_example.py). The model's train/eval mode is restored afterwards.
    ``context(positions)`` is entered around each chunk's forward pass.

    Example::

        loss, pred = per_example(model, x, y)
    """
    if x.device.type == "cpu":
        batch_size = min(batch_size, CPU_CHUNK)
    was_training = model.training
    model.eval()
    try:
        losses, preds = [], []
        for start in range(0, len(x), batch_size):
            stop = min(start + batch_size, len(x))
            around = context(torch.arange(start, stop, device=x.device)) if context else nullcontext()
            with around:
                logits = model(x[start:stop]).float()
            target = y[start : start + batch_size]
            losses.append(F.cross_entropy(logits, target, reduction="none"))
            preds.append(logits.argmax(dim=1))
        return torch.cat(losses), torch.cat(preds)
    finally:
        model.train(was_training)


def masked_accuracy(pred: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Accuracy over the examples selected by ``mask`` (NaN when none are selected)."""
    hit = pred == labels
    if mask is not None:
        hit = hit[mask]
    return float(hit.mean()) if hit.size else float("nan")
