"""The seeded membership matrix of a subset ensemble: which models train on which examples.

The design is balanced per example (as in Carlini et al. 2022's LiRA): every example
is in exactly ``round(keep * K)`` of the K models, so each example has the same number
of "in" and "out" models to estimate from. ``keep = 0.5`` is LiRA's design and
``keep = 0.7`` Feldman & Zhang 2020's 70% subsets.

Example::

    m = draw_membership(MembershipConfig(models=32, keep=0.5, seed=0), examples=1437)
    m.matrix.shape, m.matrix.sum(0)  # (32, 1437), every column 16
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from memloc.core.validation import at_least, fail

_STREAM_MEMBERSHIP = 0x4D454D  # an RNG stream of its own, apart from the run's noise and init


@dataclass(frozen=True)
class MembershipConfig:
    models: int
    keep: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        at_least(self, 2, "models")
        at_least(self, 0, "seed")
        if not 0.0 < self.keep < 1.0:
            raise fail(self, "keep", f"must lie strictly between 0 and 1, got {self.keep}")
        inside = self.models_per_example
        if not 1 <= inside <= self.models - 1:
            raise fail(
                self,
                "keep",
                f"{self.keep} of {self.models} models puts each example in {inside} of them; "
                "every example needs at least one model in and one out: change --keep or --models",
            )

    @property
    def models_per_example(self) -> int:
        return round(self.keep * self.models)


@dataclass(frozen=True)
class Membership:
    """``matrix[k, i]`` is True when model k trains on example i."""

    config: MembershipConfig
    matrix: np.ndarray = field(compare=False, repr=False)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Membership)
            and self.config == other.config
            and np.array_equal(self.matrix, other.matrix)
        )

    __hash__ = None  # type: ignore[assignment]  # holds an array

    @property
    def models(self) -> int:
        return self.matrix.shape[0]

    @property
    def examples(self) -> int:
        return self.matrix.shape[1]

    def subset(self, model: int) -> np.ndarray:
        """The sorted training-example indices of ``model``."""
        return np.flatnonzero(self.matrix[model])


def draw_membership(config: MembershipConfig, examples: int) -> Membership:
    """Each example joins ``round(keep * K)`` models chosen uniformly, from ``config.seed`` alone."""
    if examples < 1:
        raise fail(config, "models", f"needs at least one training example, got {examples}")
    rng = np.random.default_rng([config.seed, _STREAM_MEMBERSHIP])
    ranks = rng.random((config.models, examples)).argsort(axis=0).argsort(axis=0)
    return Membership(config, ranks < config.models_per_example)
