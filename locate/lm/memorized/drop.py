"""DEL: drop each localizer's top neurons for a memorized sequence (Chang et al. 2024, MemPi).

For memorized sequence s and a localizer, zero s's top ``budget`` neurons at every
token (through `core.hooks.patch`; no weight changes) and measure the drop in token
accuracy (argmax == next token) on s itself (target), on the other memorized
sequences (mean over t != s) and on plain text (mean over its texts). A good
localizer hurts the target much more than the others. A drop is the accuracy before
minus after, so positive means worse; the table reports means over sequences.

    result = run_del(model, adapter, memorized, other, plain, ["hard_concrete"], {}, budget=0.005)
    result.table()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from memloc.core.adapters import TransformerAdapter
from memloc.core.errors import DataError
from memloc.core.progress import Progress, labelled, offset
from memloc.core.validation import at_least, fail, positive
from memloc.locate.lm.memorized.accuracy import token_accuracy
from memloc.locate.lm.memorized.localizer_runs import choose_localizers, run_localizers
from memloc.locate.lm.memorized.random_baseline import RandomConfig
from memloc.locate.lm.memorized.types import NeuronAttribution, SequenceBatch


@dataclass(frozen=True)
class DelConfig:
    """``seed``: the random baseline's; ``batch_size``: texts per forward pass (results do not depend on it)."""

    budget: float = 0.005
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self) -> None:
        at_least(self, 0, "seed")
        at_least(self, 1, "batch_size")
        positive(self, "budget")
        if self.budget > 1:
            raise fail(self, "budget", f"must be at most 1, got {self.budget}")


@dataclass(frozen=True)
class DelRow:
    """One localizer's accuracy drops; ``target[s]``, ``other[s]``, ``plain[s]`` when s's neurons are zeroed."""

    method: str
    target: tuple[float, ...]
    other: tuple[float, ...]
    plain: tuple[float, ...]

    @property
    def target_drop(self) -> float:
        return float(np.mean(self.target))

    @property
    def other_drop(self) -> float:
        return float(np.mean(self.other))

    @property
    def plain_drop(self) -> float:
        return float(np.mean(self.plain))


@dataclass(frozen=True)
class DelResult:
    """MemPi's DEL table: one row per localizer, the last the random baseline."""

    config: DelConfig
    accuracy: tuple[float, ...]  # of each memorized sequence before any neuron is dropped
    plain_accuracy: float  # mean over the plain texts before any neuron is dropped
    rows: tuple[DelRow, ...]

    def table(self) -> list[dict]:
        return [
            {
                "method": r.method,
                "target drop": r.target_drop,
                "other drop": r.other_drop,
                "plain drop": r.plain_drop,
                "budget": self.config.budget,
            }
            for r in self.rows
        ]


def run_del(
    model: torch.nn.Module,
    adapter: TransformerAdapter,
    memorized: tuple[tuple[int, ...], ...],
    other: tuple[tuple[int, ...], ...],
    plain: tuple[tuple[int, ...], ...],
    localizers: Sequence[str],
    configs: Mapping[str, object],
    config: DelConfig,
    progress: Progress | None = None,
) -> DelResult:
    """Localize ``memorized`` (keeping ``other``), then drop each localizer's neurons per sequence."""
    if len(memorized) < 2:
        raise DataError(f"DEL needs at least 2 memorized sequences to compare, got {len(memorized)}")
    batch = SequenceBatch(memorized, other)
    if not plain or any(len(ids) < 2 for ids in plain):
        raise DataError("DEL needs plain text, each of at least 2 tokens")
    chosen = choose_localizers(localizers, configs)
    found = run_localizers(model, adapter, batch, chosen, RandomConfig(config.seed), progress)
    rows = []
    total = len(found) * len(memorized)
    for m, attribution in enumerate(found):
        step = offset(labelled(progress, f"drop: {attribution.method}"), m * len(memorized), total)
        rows.append(del_row(model, adapter, attribution, memorized, plain, config, step))
    before = token_accuracy(model, adapter, (*memorized, *plain), batch_size=config.batch_size)
    n = len(memorized)
    return DelResult(config, tuple(float(a) for a in before[:n]), float(before[n:].mean()), tuple(rows))


def del_row(
    model: torch.nn.Module,
    adapter: TransformerAdapter,
    attribution: NeuronAttribution,
    memorized: tuple[tuple[int, ...], ...],
    plain: tuple[tuple[int, ...], ...],
    config: DelConfig,
    progress: Progress | None = None,
) -> DelRow:
    """One attribution's drops: per memorized sequence s, zero s's top neurons and compare accuracies.

    Example::

        row = del_row(model, adapter, planted.as_attribution(), memorized, plain, DelConfig())
        row.target_drop, row.other_drop
    """
    texts, n = (*memorized, *plain), len(memorized)
    before = token_accuracy(model, adapter, texts, batch_size=config.batch_size)
    target, other, kept = [], [], []
    for s in range(n):
        zeroed = attribution.top_neurons(s, config.budget)
        drop = before - token_accuracy(model, adapter, texts, zeroed, config.batch_size)
        target.append(float(drop[s]))
        other.append(float(np.delete(drop[:n], s).mean()))
        kept.append(float(drop[n:].mean()))
        if progress is not None:
            progress(s + 1, n, f"sequence {s + 1}")
    return DelRow(attribution.method, tuple(target), tuple(other), tuple(kept))
