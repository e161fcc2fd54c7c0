"""Influence of training examples on test examples, read from a subset ensemble
(Feldman & Zhang 2020, "What Neural Networks Memorize and Why"):

    infl(i, j) = P(correct on test j | i in) − P(correct on test j | i out),

over the ensemble's models. Larger = training example i helps test example j more,
the mark of a memorized training example that a near-duplicate test example relies on.

The N x M matrix is never held: training examples go in chunks of ``chunk`` rows, each
chunk's block is two matrix products of the (K, chunk) membership with the (K, M)
correctness, and only the best ``top`` pairs survive each chunk. The paper's
high-influence pairs are mem_i >= 0.25 and infl >= 0.15 (`InfluenceConfig.paper`).

Example::

    result = influence_pairs(ensemble, InfluenceConfig.paper(top=50))
    [(p.train, p.test, p.influence) for p in result.pairs[:5]]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from memloc.core.ensemble.logits import EnsembleLogits
from memloc.core.validation import at_least, finite
from memloc.locate.classifier.subset_memorization import (
    PAPER_MEM_THRESHOLD,
    LabelMemorizationConfig,
    label_memorization,
)

PAPER_INFLUENCE_THRESHOLD = 0.15


@dataclass(frozen=True)
class InfluenceConfig:
    top: int = 100  # pairs kept, the most influential first
    chunk: int = 1024  # training examples per block of the computation
    min_mem: float | None = None  # keep only pairs whose training example has mem >= this
    min_influence: float | None = None  # keep only pairs with influence >= this

    def __post_init__(self) -> None:
        at_least(self, 1, "top", "chunk")
        finite(self, "min_mem", "min_influence")

    @classmethod
    def paper(cls, top: int = 100, chunk: int = 1024) -> InfluenceConfig:
        """Feldman & Zhang's high-influence filter: mem_i >= 0.25 and infl >= 0.15."""
        return cls(top, chunk, PAPER_MEM_THRESHOLD, PAPER_INFLUENCE_THRESHOLD)


@dataclass(frozen=True)
class InfluencePair:
    train: int  # training example index
    test: int  # test example index
    influence: float
    mem: float  # label memorization of the training example


@dataclass(frozen=True)
class InfluenceResult:
    """The ``top`` pairs by influence (ties by train, then test index) among those passing the filter."""

    pairs: tuple[InfluencePair, ...]
    passing: int  # pairs passing the filter, kept or not
    max_influence: float  # over all N x M pairs, filtered or not
    mem: np.ndarray = field(compare=False, repr=False)


def influence_block(inside: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """infl (n, M) for membership ``inside`` (K, n) and test correctness ``correct`` (K, M)."""
    member = inside.astype(np.float64)
    right = correct.astype(np.float64)
    n_in = member.sum(0)[:, None]
    n_out = inside.shape[0] - n_in
    sum_in = member.T @ right
    sum_out = right.sum(0)[None, :] - sum_in
    return sum_in / n_in - sum_out / n_out


def _best(values: np.ndarray, top: int) -> np.ndarray:
    """Flat indices of the ``top`` largest values, largest first, ties by index (deterministic)."""
    if values.size > top:
        cut = np.partition(values, values.size - top)[values.size - top]
        candidates = np.flatnonzero(values >= cut)  # every tie at the cut, so the index order decides
    else:
        candidates = np.arange(values.size)
    order = np.lexsort((candidates, -values[candidates]))
    return candidates[order[:top]]


def influence_pairs(ensemble: EnsembleLogits, config: InfluenceConfig) -> InfluenceResult:
    """The most influential (train, test) pairs of the ensemble, computed ``config.chunk`` rows at a time.

    Example::

        pairs = influence_pairs(ensemble, InfluenceConfig(top=20, chunk=512)).pairs
    """
    mem = label_memorization(ensemble, LabelMemorizationConfig()).mem  # checks in and out models
    inside = ensemble.membership.matrix
    correct = ensemble.test_correct()
    tests = correct.shape[1]
    kept_train = np.zeros(0, dtype=np.int64)
    kept_test = np.zeros(0, dtype=np.int64)
    kept_value = np.zeros(0)
    passing, biggest = 0, -np.inf
    for start in range(0, len(mem), config.chunk):
        block = influence_block(inside[:, start : start + config.chunk], correct)
        if block.size:
            biggest = max(biggest, float(block.max()))
        ok = np.ones(block.shape, dtype=bool)
        if config.min_influence is not None:
            ok &= block >= config.min_influence
        if config.min_mem is not None:
            ok &= (mem[start : start + len(block)] >= config.min_mem)[:, None]
        flat = np.flatnonzero(ok)
        passing += len(flat)
        pick = flat[_best(block.ravel()[flat], config.top)]
        kept_train = np.concatenate([kept_train, start + pick // tests])
        kept_test = np.concatenate([kept_test, pick % tests])
        kept_value = np.concatenate([kept_value, block.ravel()[pick]])
        # candidates are in (train, test) order, so _best's index tie-break is that order
        order = np.lexsort((kept_test, kept_train))
        kept_train, kept_test, kept_value = kept_train[order], kept_test[order], kept_value[order]
        best = _best(kept_value, config.top)
        kept_train, kept_test, kept_value = kept_train[best], kept_test[best], kept_value[best]
    pairs = tuple(
        InfluencePair(int(i), int(j), float(v), float(mem[i]))
        for i, j, v in zip(kept_train, kept_test, kept_value, strict=True)
    )
    return InfluenceResult(pairs=pairs, passing=passing, max_influence=biggest, mem=mem)
