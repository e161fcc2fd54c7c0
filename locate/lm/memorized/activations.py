"""Activations: how much more a neuron fires on a memorized sequence than on other text.

Chang et al. 2024 (MemPi): score = mean over the sequence's tokens of |a| at
``mlp.post`` minus the same mean over every token of the other text (zero when no
other text is given). Sequences run through `core.hooks.trace`, ``batch_size`` at a time.

    result = localize_activations(model, adapter, batch, ActivationsConfig())
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from memloc.core.adapters import TransformerAdapter
from memloc.core.hooks import trace
from memloc.core.progress import Progress
from memloc.core.sites import Site
from memloc.core.validation import at_least
from memloc.locate.lm.memorized.types import NeuronAttribution, SequenceBatch, model_device


@dataclass(frozen=True)
class ActivationsConfig:
    """``batch_size``: texts per forward pass (equal lengths batch together); results do not depend on it."""

    batch_size: int = 8

    def __post_init__(self) -> None:
        at_least(self, 1, "batch_size")


def localize_activations(
    model: torch.nn.Module,
    adapter: TransformerAdapter,
    batch: SequenceBatch,
    config: ActivationsConfig,
    *,
    progress: Progress | None = None,
) -> NeuronAttribution:
    """Per sequence, mean |activation| on it minus mean |activation| on the other text.

    One pass over every text; ``progress`` is told once it is done.
    """
    means = mean_abs_activations(model, adapter, batch.sequences, config.batch_size)
    if batch.other:
        other = mean_abs_activations(model, adapter, batch.other, config.batch_size)
        weights = np.array([len(ids) for ids in batch.other], dtype=np.float64)
        baseline = np.tensordot(weights / weights.sum(), np.stack(other), axes=1)
    else:
        baseline = np.zeros_like(means[0])
    if progress is not None:
        progress(1, 1, "activations")
    return NeuronAttribution("activations", tuple(m - baseline for m in means))


def mean_abs_activations(
    model: torch.nn.Module, adapter: TransformerAdapter, texts: Sequence[tuple[int, ...]], batch_size: int
) -> list[np.ndarray]:
    """Per text, the (layers, d_mlp) mean over its tokens of |mlp.post|."""
    sites = [Site(layer, "mlp.post") for layer in range(adapter.n_layers)]
    device = model_device(model)
    out: list[np.ndarray] = [np.zeros(0)] * len(texts)
    # Only texts of one length share a pass, so no padding can change a mean.
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(texts):
        by_length.setdefault(len(ids), []).append(i)
    with torch.no_grad(), trace(model, adapter, sites) as seen:
        for members in by_length.values():
            for start in range(0, len(members), batch_size):
                chunk = members[start : start + batch_size]
                model(input_ids=torch.tensor([texts[i] for i in chunk], device=device))
                stacked = torch.stack([seen[s].abs().double().mean(1) for s in sites], 1)  # (R, L, F)
                for row, i in enumerate(chunk):
                    out[i] = stacked[row].cpu().numpy()
    return out
