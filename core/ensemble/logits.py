"""What a finished subset ensemble holds: its membership and every model's final logits.

Every measure of memorization by retraining (locate/classifier/subset_memorization.py,
lira.py, ...) reads this one type, so that one ensemble serves them all.

Example::

    ens = EnsembleLogits(membership, train_logits, test_logits, given, test_labels)
    ens.train_correct().shape  # (K, N): model k right on example i's given label
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from memloc.core.ensemble.membership import Membership
from memloc.core.errors import MemlocError


@dataclass(frozen=True, eq=False)
class EnsembleLogits:
    """Final logits of K models: ``train_logits`` (K, N, C) and ``test_logits`` (K, M, C), float32.

    ``given`` (N,) are the labels the models trained on (noisy where noise was injected);
    ``test_labels`` (M,) the test set's labels. ``membership.matrix[k, i]`` says whether
    model k trained on example i; no model trains on a test example.
    """

    membership: Membership
    train_logits: np.ndarray = field(repr=False)
    test_logits: np.ndarray = field(repr=False)
    given: np.ndarray = field(repr=False)
    test_labels: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        k, n = self.membership.matrix.shape
        if self.train_logits.ndim != 3 or self.train_logits.shape[:2] != (k, n):
            raise MemlocError(
                f"train logits of shape {self.train_logits.shape} do not match {k} models x {n} examples"
            )
        classes = self.train_logits.shape[2]
        if (
            self.test_logits.ndim != 3
            or self.test_logits.shape[0] != k
            or self.test_logits.shape[2] != classes
        ):
            raise MemlocError(
                f"test logits of shape {self.test_logits.shape} do not match {k} models x {classes} classes"
            )
        if self.given.shape != (n,) or self.test_labels.shape != (self.test_logits.shape[1],):
            raise MemlocError("the labels do not match the logits' examples")

    @property
    def models(self) -> int:
        return self.membership.models

    @property
    def classes(self) -> int:
        return self.train_logits.shape[2]

    def train_correct(self) -> np.ndarray:
        """(K, N) bool: model k predicts example i's given label."""
        return self.train_logits.argmax(-1) == self.given[None, :]

    def test_correct(self) -> np.ndarray:
        """(K, M) bool: model k predicts test example j's label."""
        return self.test_logits.argmax(-1) == self.test_labels[None, :]
