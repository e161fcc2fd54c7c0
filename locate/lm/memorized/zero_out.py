"""Zero-Out: the loss increase on a memorized sequence when one neuron is zeroed (Chang et al. 2024).

For every neuron (layer, unit) of ``mlp.post`` at every token, score = loss with that
neuron zeroed minus the clean loss, where loss is the mean next-token cross-entropy
of the sequence. Many neurons are ablated per forward pass: the sequence is repeated
over the batch and row r zeroes its own neuron, through `core.hooks.patch`.

    result = localize_zero_out(model, adapter, batch, ZeroOutConfig(batch_size=256))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from memloc.core.adapters import TransformerAdapter
from memloc.core.hooks import patch
from memloc.core.progress import Progress, offset
from memloc.core.sites import Site
from memloc.core.validation import at_least
from memloc.locate.lm.memorized.types import (
    NeuronAttribution,
    SequenceBatch,
    model_device,
    sequence_tensor,
    token_losses,
)


@dataclass(frozen=True)
class ZeroOutConfig:
    """``batch_size``: ablated neurons (rows) per forward pass; results do not depend on it."""

    batch_size: int = 128

    def __post_init__(self) -> None:
        at_least(self, 1, "batch_size")


def localize_zero_out(
    model: torch.nn.Module,
    adapter: TransformerAdapter,
    batch: SequenceBatch,
    config: ZeroOutConfig,
    *,
    progress: Progress | None = None,
) -> NeuronAttribution:
    """Per sequence, the (layers, d_mlp) loss increase of zeroing each neuron alone.

    ``progress`` follows the layers swept.
    """
    device = model_device(model)
    total = len(batch.sequences) * adapter.n_layers
    with torch.no_grad():
        scores = tuple(
            _sequence_scores(
                model, adapter, sequence_tensor(ids, device), config.batch_size,
                offset(progress, s * adapter.n_layers, total),
            )
            for s, ids in enumerate(batch.sequences)
        )  # fmt: skip
    return NeuronAttribution("zero_out", scores)


def _sequence_scores(
    model: torch.nn.Module,
    adapter: TransformerAdapter,
    ids: torch.Tensor,
    batch_size: int,
    progress: Progress | None = None,
) -> np.ndarray:
    clean = float(token_losses(model(input_ids=ids).logits, ids)[0])
    width = adapter.d_mlp
    out = np.zeros((adapter.n_layers, width))
    for layer in range(adapter.n_layers):
        for start in range(0, width, batch_size):
            units = torch.arange(start, min(start + batch_size, width), device=ids.device)
            fns = {Site(layer, "mlp.post"): _zero_one_per_row(units)}
            with patch(model, adapter, fns):
                logits = model(input_ids=ids.expand(len(units), -1)).logits
            losses = token_losses(logits, ids.expand(len(units), -1))
            out[layer, start : start + len(units)] = losses.double().cpu().numpy() - clean
        if progress is not None:
            progress(layer + 1, adapter.n_layers, "zero-out layers")
    return out


def _zero_one_per_row(units: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Row r's neuron ``units[r]`` zeroed at every token; other rows' neurons untouched."""

    def fn(act: torch.Tensor) -> torch.Tensor:  # (R, T, F)
        keep = torch.ones(act.shape[0], act.shape[-1], dtype=act.dtype, device=act.device)
        keep[torch.arange(act.shape[0], device=act.device), units.to(act.device)] = 0
        return act * keep[:, None, :]

    return fn
