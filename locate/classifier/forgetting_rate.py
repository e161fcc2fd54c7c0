"""Forgetting rate (Jagielski et al. 2023, "Measuring Forgetting of Memorized Training
Examples"; survey Definition 11): how well a membership attack still finds examples some
steps after training on them stopped.

The attack is offline LiRA (Carlini et al. 2022, locate/classifier/lira.py): the target's
logit-scaled confidence φ on each example, scored against the out fit N(μ_out, σ_out²) of
an ensemble of shadow models (`EnsembleLogits`) that did not train on it. For a test
example every shadow is out. Members are the examples the target trained on, non-members
the test examples; success is the attack's AUC and its TPR at a low FPR (1% by default).

Example::

    fits = out_fits(ensemble)
    curve = attack_curve(member_phi, test_phi, fits.train(first), fits.test, fpr=0.01)
    curve.auc  # one AUC per fine-tuning epoch
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from memloc.core.ensemble.logits import EnsembleLogits
from memloc.core.errors import MemlocError
from memloc.locate.classifier.lira import logit_confidence, offline_score, out_statistics
from sklearn.metrics import roc_auc_score, roc_curve

Fit = tuple[np.ndarray, np.ndarray]  # (mu_out, sigma_out) per example


@dataclass(frozen=True)
class AttackCurve:
    """The attack's success after each fine-tuning epoch (row 0: before fine-tuning)."""

    fpr: float  # the false-positive rate ``tpr`` is read at
    auc: np.ndarray = field(compare=False, repr=False)  # (T,)
    tpr: np.ndarray = field(compare=False, repr=False)  # (T,)


@dataclass(frozen=True)
class OutFits:
    """The shadows' out fits of φ on every training example and every test example."""

    train_mu: np.ndarray = field(repr=False)
    train_sigma: np.ndarray = field(repr=False)
    test_mu: np.ndarray = field(repr=False)
    test_sigma: np.ndarray = field(repr=False)

    def train(self, index: np.ndarray) -> Fit:
        return self.train_mu[index], self.train_sigma[index]

    @property
    def test(self) -> Fit:
        return self.test_mu, self.test_sigma


def out_fits(ensemble: EnsembleLogits) -> OutFits:
    """μ_out, σ_out of φ per training example (over the models that left it out) and per test example."""
    train_phi = logit_confidence(
        ensemble.train_logits, np.broadcast_to(ensemble.given, ensemble.train_logits.shape[:2])
    )
    test_phi = logit_confidence(
        ensemble.test_logits, np.broadcast_to(ensemble.test_labels, ensemble.test_logits.shape[:2])
    )
    mu, sigma = out_statistics(train_phi, ensemble.membership.matrix)
    test_mu, test_sigma = out_statistics(test_phi, np.zeros(test_phi.shape, dtype=bool))
    return OutFits(mu, sigma, test_mu, test_sigma)


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """The highest TPR of the ROC curve at a false-positive rate of at most ``fpr``."""
    fprs, tprs, _ = roc_curve(labels, scores)
    return float(tprs[fprs <= fpr].max())


def attack_curve(
    member_phi: np.ndarray, nonmember_phi: np.ndarray, member_out: Fit, nonmember_out: Fit, fpr: float = 0.01
) -> AttackCurve:
    """Offline LiRA's AUC and TPR at ``fpr``, per row of target φ: members (T, n), non-members (T, m)."""
    if member_phi.ndim != 2 or nonmember_phi.ndim != 2 or len(member_phi) != len(nonmember_phi):
        raise MemlocError("member and non-member confidences need one row per epoch, the same number of rows")
    labels = np.r_[np.ones(member_phi.shape[1]), np.zeros(nonmember_phi.shape[1])]
    aucs, tprs = [], []
    for members, others in zip(member_phi, nonmember_phi, strict=True):
        scores = np.r_[offline_score(members, *member_out), offline_score(others, *nonmember_out)]
        aucs.append(float(roc_auc_score(labels, scores)))
        tprs.append(tpr_at_fpr(labels, scores, fpr))
    return AttackCurve(fpr, np.array(aucs), np.array(tprs))
