"""Batched per-example evaluation of classifiers."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def per_example(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy loss and predicted class of every example, in eval mode.

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        losses, preds = [], []
        for start in range(0, len(x), batch_size):
            logits = model(x[start : start + batch_size]).float()
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
