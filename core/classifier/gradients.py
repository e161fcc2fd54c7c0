"""Gradient accounting: how much of each layer group's gradient comes from noisy labels.

Following Maini et al. 2023 (Sec. 3, "gradient accounting"): the batch loss
L = (1/B) sum_i l_i splits into a clean part L_c (clean examples) and a noisy part
L_n (mislabeled examples), so dL/dw = dL_c/dw + dL_n/dw exactly. Each part is
backpropagated separately; per group we keep the norm of each part, scaled by
1/sqrt(numel) so groups of different size compare, and the cosine between them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GroupGradientStats:
    """Per-group statistics of one step: scaled norms of each part and their cosine."""

    clean_norm: list[float]
    noisy_norm: list[float]
    cosine: list[float]  # NaN where a part is zero (e.g. a batch without noisy examples)


def split_gradients(
    losses: torch.Tensor, noisy: torch.Tensor, params: Sequence[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Gradients of the clean and noisy parts of ``losses.mean()`` w.r.t. ``params``.

    ``losses`` are per-example losses of one batch and ``noisy`` a bool mask over it.
    The two returned lists sum to the gradient of the batch mean loss.
    """
    batch = losses.shape[0]
    parts = []
    for select, retain in ((~noisy, True), (noisy, False)):
        if bool(select.any()):
            part = losses[select].sum() / batch
            grads = torch.autograd.grad(part, params, retain_graph=retain, allow_unused=True)
            parts.append(
                [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
            )
        else:
            parts.append([torch.zeros_like(p) for p in params])
    return parts[0], parts[1]


def group_stats(
    clean: Sequence[torch.Tensor], noisy: Sequence[torch.Tensor], groups: Sequence[Sequence[int]]
) -> GroupGradientStats:
    """Norms and cosines per group; ``groups[g]`` lists indices into the gradient lists."""
    cn, nn_, cos = [], [], []
    for members in groups:
        c = torch.cat([clean[i].reshape(-1) for i in members])
        n = torch.cat([noisy[i].reshape(-1) for i in members])
        scale = math.sqrt(c.numel())
        c_norm, n_norm = float(c.norm()), float(n.norm())
        cn.append(c_norm / scale)
        nn_.append(n_norm / scale)
        denom = c_norm * n_norm
        cos.append(float(torch.dot(c, n)) / denom if denom > 0 else math.nan)
    return GroupGradientStats(cn, nn_, cos)


@contextmanager
def frozen_parameters(model: torch.nn.Module) -> Iterator[None]:
    """No parameter gradients in the body (only inputs or masks need them); flags restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
