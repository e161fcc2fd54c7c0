"""Hand-made subset ensembles with known answers, shared by the ensemble-measure tests."""

from __future__ import annotations

import numpy as np
from memloc.core.ensemble.logits import EnsembleLogits
from memloc.core.ensemble.membership import Membership, MembershipConfig, draw_membership

RIGHT = np.log(3.0)  # logits (0, log 3) give p = 0.75 to class 1 and 0.25 to class 0


def two_class_logits(correct: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(K, N, 2) logits whose argmax is ``labels`` where ``correct``, the other class elsewhere; p = 0.75."""
    predicted = np.where(correct, labels[None, :], 1 - labels[None, :])
    logits = np.zeros((*correct.shape, 2), dtype=np.float32)
    np.put_along_axis(logits, predicted[..., None], RIGHT, axis=-1)
    return logits


def ensemble_from(
    matrix: np.ndarray, correct: np.ndarray, test_correct: np.ndarray | None = None
) -> EnsembleLogits:
    """An ensemble of K = rows of ``matrix`` models whose train (and test) correctness is as given."""
    k, n = matrix.shape
    keep = float(matrix.sum(0).mean() / k)
    membership = Membership(MembershipConfig(models=k, keep=min(max(keep, 0.01), 0.99)), matrix.astype(bool))
    given = np.arange(n) % 2
    if test_correct is None:
        test_correct = np.ones((k, 1), dtype=bool)
    test_labels = np.arange(test_correct.shape[1]) % 2
    return EnsembleLogits(
        membership,
        two_class_logits(correct, given),
        two_class_logits(test_correct, test_labels),
        given,
        test_labels,
    )


def random_ensemble(models: int, examples: int, tests: int, seed: int, keep: float = 0.5) -> EnsembleLogits:
    """Random correctness with an in-effect, on a balanced membership drawn from ``seed``."""
    membership = draw_membership(MembershipConfig(models=models, keep=keep, seed=seed), examples)
    rng = np.random.default_rng(seed)
    inside = membership.matrix
    correct = rng.random(inside.shape) < np.where(inside, 0.9, 0.6)
    test_correct = rng.random((models, tests)) < 0.7
    ens = ensemble_from(inside, correct, test_correct)
    return EnsembleLogits(membership, ens.train_logits, ens.test_logits, ens.given, ens.test_labels)
