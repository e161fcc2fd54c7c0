"""The learning-rate schedule, shuffles and divergence check shared by every classifier training loop.

Both are pure functions of their arguments, so a run resumed after epoch k continues
exactly as the uninterrupted run would, and K models trained one by one or batched
(core/ensemble/batched.py) see the same steps.
"""

from __future__ import annotations

import math

import torch
from memloc.core.errors import MemlocError


def warmup_cosine(lr: float, step: int, total: int) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to zero.

    The low final rate is what lets the network fit (memorize) the noisy labels.
    """
    warm = max(1, total // 20)
    if step < warm:
        return lr * (step + 1) / warm
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of epoch ``epoch``'s shuffle under ``seed``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def check_finite_loss(loss: torch.Tensor, epoch: int, step: int) -> None:
    """Stop a diverged run with the step it diverged at, instead of training on NaN."""
    if not torch.isfinite(loss).all():
        raise MemlocError(
            f"training diverged at epoch {epoch}, step {step} (non-finite loss); lower lr", field="lr"
        )
