"""Integrated gradients over a layer's activations, shared by the LM localizers.

Sundararajan, Taly and Yan, "Axiomatic Attribution for Deep Networks", ICML 2017:
``IG_i = x_i * (1/m) * sum_{k=0}^{m-1} df/dx_i at (k/m) * x`` (left Riemann sum, zero
baseline). Knowledge neurons (Dai et al. 2022) integrate the last token's activation;
MemPi's IG localizer (Chang et al. 2024) integrates every token of a sequence. Both
phrase the model as ``rows(scaled, which)``: a batch of scaled activations, each row
tagged with the site it replaces, mapped to one score per row.

    attr = integrated_gradients(rows, clean, which, steps=20, batch_size=64)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from captum.attr import IntegratedGradients
from torch.utils.checkpoint import checkpoint

RowsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def integrated_gradients(
    rows: RowsFn, clean: torch.Tensor, which: torch.Tensor, steps: int, batch_size: int | None
) -> torch.Tensor:
    """captum's left Riemann IG of ``rows`` from a zero baseline; same shape as ``clean``.

    captum repeats ``which`` with the steps, so every expanded row knows its site.
    """

    def forward(scaled: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        return chunked(rows, scaled, which, batch_size)

    ig = IntegratedGradients(forward)
    return ig.attribute(
        clean,
        baselines=torch.zeros_like(clean),
        additional_forward_args=(which,),
        n_steps=steps,
        method="riemann_left",
    ).detach()


def chunked(rows: RowsFn, scaled: torch.Tensor, which: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    """``rows`` over chunks of at most ``batch_size`` rows.

    With several chunks each one is checkpointed: its activations are recomputed in
    the backward pass rather than held, so memory is bounded by one chunk.
    """
    n = scaled.shape[0]
    if batch_size is None or batch_size >= n:
        return rows(scaled, which)
    parts = [
        checkpoint(rows, scaled[s : s + batch_size], which[s : s + batch_size], use_reentrant=False)
        for s in range(0, n, batch_size)
    ]
    return torch.cat(parts)
