"""Inputs and results shared by the memorized-sequence localizers (Chang et al. 2024, MemPi).

Chang, Liu, Carlini and Jia, "Do Localization Methods Actually Localize Memorized
Data in LLMs?", NAACL 2024. A neuron is one coordinate of ``Site(layer, "mlp.post")``,
the input of a layer's FFN down-projection, over every layer.

    batch = SequenceBatch(sequences=((5, 9, 12, 3),), other=((7, 8, 2),))
    result = localize_zero_out(model, adapter, batch, ZeroOutConfig())
    result.top_neurons(0, 0.005)   # [(layer, unit), ...], best first
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from memloc.core.errors import DataError
from memloc.core.sites import Neuron


@dataclass(frozen=True)
class SequenceBatch:
    """Token ids of the memorized sequences to localize, and of other text to keep."""

    sequences: tuple[tuple[int, ...], ...]
    other: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if not self.sequences:
            raise DataError("no memorized sequences to localize")
        for ids in (*self.sequences, *self.other):
            if len(ids) < 2:
                raise DataError(f"a sequence needs at least 2 tokens to have a loss, got {len(ids)}")


@dataclass(frozen=True)
class NeuronAttribution:
    """One localizer's scores: ``scores[s]`` is (layers, d_mlp) for sequence s, higher = more responsible."""

    method: str
    scores: tuple[np.ndarray, ...]

    def top_neurons(self, seq: int, budget_fraction: float) -> list[Neuron]:
        """The best ``budget_fraction`` of all neurons (at least one) for sequence ``seq``, best first.

        Ties break by (layer, unit), so the order is deterministic.
        """
        if not 0.0 < budget_fraction <= 1.0:
            raise DataError(f"the budget must lie in (0, 1], got {budget_fraction}")
        score = self.scores[seq]
        k = max(1, math.ceil(budget_fraction * score.size))
        flat = score.reshape(-1)
        order = np.lexsort((np.arange(flat.size), -flat))[:k]
        width = score.shape[1]
        return [(int(i // width), int(i % width)) for i in order]

    def per_layer_counts(self, seq: int, budget: float) -> dict[int, int]:
        """How many of sequence ``seq``'s top neurons lie in each layer (every layer listed)."""
        counts = dict.fromkeys(range(self.scores[seq].shape[0]), 0)
        for layer, _ in self.top_neurons(seq, budget):
            counts[layer] += 1
        return counts

    def overlap(self, budget: float) -> np.ndarray:
        """Jaccard index between every two sequences' top sets, (S, S)."""
        sets = [set(self.top_neurons(s, budget)) for s in range(len(self.scores))]
        n = len(sets)
        out = np.ones((n, n))
        for i in range(n):
            for j in range(n):
                if i != j:
                    out[i, j] = len(sets[i] & sets[j]) / len(sets[i] | sets[j])
        return out


def sequence_tensor(ids: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """One sequence as a (1, T) tensor on the model's device."""
    return torch.tensor([ids], device=device)


def token_losses(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy per row: logits (R, T, V), ids (R, T) -> (R,)."""
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    return -logp.gather(-1, ids[:, 1:, None]).squeeze(-1).mean(-1)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's parameters."""
    return next(model.parameters()).device
