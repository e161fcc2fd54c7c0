"""The random localizer: seeded uniform scores, the baseline row of MemPi's INJ and DEL tables.

Chang et al. 2024 (MemPi) compare every localizer with neurons drawn at random; the
top-k of i.i.d. uniform scores is a uniform random k-subset of all neurons. Sequence
s draws from its own stream (seed, s), so a score does not depend on the other sequences.
``first`` is the index of the batch's first sequence in the whole run, so a run that
localizes its sequences one batch at a time draws what one batch of all would.

    result = localize_random(model, adapter, batch, RandomConfig(seed=0))
    result.top_neurons(0, 0.005)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from memloc.core.adapters import TransformerAdapter
from memloc.core.progress import Progress
from memloc.core.validation import at_least
from memloc.locate.lm.memorized.types import NeuronAttribution, SequenceBatch

# Keeps this stream apart from the one inject.py plants neurons with, for one seed.
_STREAM = 2


@dataclass(frozen=True)
class RandomConfig:
    seed: int = 0
    first: int = 0

    def __post_init__(self) -> None:
        at_least(self, 0, "seed")
        at_least(self, 0, "first")


def localize_random(
    model: torch.nn.Module,
    adapter: TransformerAdapter,
    batch: SequenceBatch,
    config: RandomConfig,
    *,
    progress: Progress | None = None,  # instant; accepted like every localizer's
) -> NeuronAttribution:
    """Per sequence, (layers, d_mlp) uniform scores in [0, 1); the model is never run."""
    shape = (adapter.n_layers, adapter.d_mlp)
    scores = tuple(
        np.random.default_rng((config.seed, _STREAM, config.first + s)).random(shape)
        for s in range(len(batch.sequences))
    )
    return NeuronAttribution("random", scores)
