"""LiRA evaluated on a subset ensemble: every model in turn is the target and the others
are its shadows (Carlini et al. 2022, "Membership Inference Attacks From First
Principles", §VI). The primitives (φ, the Gaussian scores) are lira.py's.

For target t and training example i, the in and out Gaussians of φ are fitted over the
shadows k != t. Nothing loops over examples or targets: the in/out sums of φ and φ² over
all K models are taken once and the target's own term is subtracted, giving (K, N)
leave-target-out means and variances in a few array operations.

Variants, each oriented so that larger = "more likely a member":

- ``online``: log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²), per-example σ;
- ``online_fixed``: the same with one σ_in and one σ_out per target, pooled over all
  examples (the within-example spread; ALGORITHMS part D: use it when K < ~64);
- ``offline`` / ``offline_fixed``: log Φ((φ − μ_out) / σ_out), the out fit only;
- ``loss``: the LOSS baseline, −cross-entropy of the target on the given label.

Members are the target's in examples, non-members its out examples; with
``include_test`` the test set joins the non-members of the variants that need no in fit
(offline, offline_fixed, loss; no model trains on a test example, so the online
variants have no in fit there). Scores are pooled over all targets into one ROC per
variant.

Example::

    result = evaluate_lira(ensemble, LiraConfig())
    online = result.variant("online")
    online.auc, online.tpr_at_0_1pct, online.tpr_at_1pct
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from memloc.core.ensemble.logits import EnsembleLogits
from memloc.core.errors import MemlocError
from memloc.core.validation import at_least, fail
from memloc.locate.classifier.lira import logit_confidence, offline_score, online_score
from memloc.locate.classifier.subset_memorization import require_in_and_out
from scipy.special import log_softmax
from sklearn.metrics import roc_auc_score, roc_curve

VARIANTS = ("online", "online_fixed", "offline", "offline_fixed", "loss")
NEEDS_NO_IN_FIT = ("offline", "offline_fixed", "loss")


@dataclass(frozen=True)
class LiraConfig:
    include_test: bool = False  # the test set joins the non-members of the offline and LOSS variants
    grid: int = 100  # points of the compact ROC, log-spaced in FPR
    min_fpr: float = 1e-5  # the grid's lowest FPR

    def __post_init__(self) -> None:
        at_least(self, 2, "grid")
        if not 0.0 < self.min_fpr < 1.0:
            raise fail(self, "min_fpr", f"must lie strictly between 0 and 1, got {self.min_fpr}")


@dataclass(frozen=True)
class ShadowStatistics:
    """Leave-target-out fits: ``[t, i]`` is over the shadows k != t; ``*_fixed`` (K,) pooled per target."""

    mu_in: np.ndarray
    sigma_in: np.ndarray
    mu_out: np.ndarray
    sigma_out: np.ndarray
    sigma_in_fixed: np.ndarray
    sigma_out_fixed: np.ndarray


def _leave_out(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, mean, sum of squared deviations) over the rows where ``mask`` holds, row t left out."""
    kept = np.where(mask, values, 0.0)
    count = mask.sum(0)[None, :] - mask
    first = kept.sum(0)[None, :] - kept
    second = (kept * kept).sum(0)[None, :] - kept * kept
    mean = first / np.maximum(count, 1)
    squares = np.maximum(second - first * mean, 0.0)
    return count, mean, squares


def shadow_statistics(phi: np.ndarray, inside: np.ndarray) -> ShadowStatistics:
    """In and out Gaussians of φ (K, N) for every target t over the shadows k != t.

    Every example needs at least two in and two out models (one of each beside any target).
    """
    inside = np.asarray(inside, dtype=bool)
    require_in_and_out(inside, 2, 2)
    phi = np.asarray(phi, dtype=np.float64)
    center = phi.mean(0)  # centring keeps Σφ² − (Σφ)²/n from cancelling away the variance
    shifted = phi - center
    fits = []
    for mask in (inside, ~inside):
        count, mean, squares = _leave_out(shifted, mask)
        pooled = np.sqrt(squares.sum(1) / np.maximum((count - 1).sum(1), 1))
        # One shadow on a side has no spread: its example falls back to the target's pooled σ
        # (with K = 4 and keep 0.5 a member has a single in shadow), not to a zero σ that
        # would make its likelihood ratio meaningless.
        sigma = np.where(count >= 2, np.sqrt(squares / np.maximum(count - 1, 1)), pooled[:, None])
        fits.append((mean + center, sigma, pooled))
    (mu_in, sigma_in, fixed_in), (mu_out, sigma_out, fixed_out) = fits
    return ShadowStatistics(mu_in, sigma_in, mu_out, sigma_out, fixed_in, fixed_out)


def unseen_statistics(test_phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and σ of φ (K, M) of test examples over the shadows k != t (every model is out)."""
    count, mean, squares = _leave_out(np.asarray(test_phi, dtype=np.float64), np.ones(test_phi.shape, bool))
    return mean, np.sqrt(squares / np.maximum(count - 1, 1))


@dataclass(frozen=True)
class AttackScores:
    """(K, N) scores of each target on each training example, one array per variant but LOSS."""

    online: np.ndarray
    online_fixed: np.ndarray
    offline: np.ndarray
    offline_fixed: np.ndarray


def attack_scores(phi: np.ndarray, stats: ShadowStatistics) -> AttackScores:
    fixed_in, fixed_out = stats.sigma_in_fixed[:, None], stats.sigma_out_fixed[:, None]
    return AttackScores(
        online=online_score(phi, stats.mu_in, stats.sigma_in, stats.mu_out, stats.sigma_out),
        online_fixed=online_score(phi, stats.mu_in, fixed_in, stats.mu_out, fixed_out),
        offline=offline_score(phi, stats.mu_out, stats.sigma_out),
        offline_fixed=offline_score(phi, stats.mu_out, fixed_out),
    )


@dataclass(frozen=True)
class RocSummary:
    """One variant's ROC pooled over all targets; ``fpr``/``tpr`` a compact step curve on a log grid."""

    variant: str
    auc: float
    tpr_at_0_1pct: float  # TPR at FPR <= 0.1%
    tpr_at_1pct: float
    members: int
    nonmembers: int
    fpr: np.ndarray = field(compare=False, repr=False)
    tpr: np.ndarray = field(compare=False, repr=False)


def pooled_roc(variant: str, members: np.ndarray, nonmembers: np.ndarray, config: LiraConfig) -> RocSummary:
    scores = np.concatenate([members.ravel(), nonmembers.ravel()])
    if not np.isfinite(scores).all():
        raise MemlocError(f"the {variant} scores hold NaN or inf; check the ensemble's logits")
    truth = np.concatenate([np.ones(members.size, bool), np.zeros(nonmembers.size, bool)])
    fpr, tpr, _ = roc_curve(truth, scores)

    def tpr_at(x: np.ndarray | float) -> np.ndarray:
        # the conservative step curve: the best TPR among thresholds whose FPR does not exceed x
        return tpr[np.searchsorted(fpr, x, side="right") - 1]

    grid = np.logspace(np.log10(config.min_fpr), 0.0, config.grid)
    return RocSummary(
        variant=variant,
        auc=float(roc_auc_score(truth, scores)),
        tpr_at_0_1pct=float(tpr_at(1e-3)),
        tpr_at_1pct=float(tpr_at(1e-2)),
        members=int(members.size),
        nonmembers=int(nonmembers.size),
        fpr=grid,
        tpr=tpr_at(grid),
    )


@dataclass(frozen=True)
class LiraResult:
    """One `RocSummary` per variant (in VARIANTS order), pooled over ``targets`` target models."""

    targets: int
    include_test: bool
    variants: tuple[RocSummary, ...]

    def variant(self, name: str) -> RocSummary:
        for summary in self.variants:
            if summary.variant == name:
                return summary
        raise MemlocError(f"no LiRA variant {name!r}; the variants are {', '.join(VARIANTS)}")


def lira_from_phi(
    phi: np.ndarray,
    inside: np.ndarray,
    loss: np.ndarray,
    config: LiraConfig,
    *,
    test_phi: np.ndarray | None = None,
    test_loss: np.ndarray | None = None,
) -> LiraResult:
    """Every-model-as-target LiRA on φ (K, N), membership (K, N) and the LOSS score −CE (K, N).

    ``test_phi``/``test_loss`` (K, M) are needed when ``config.include_test``.

    Example::

        lira_from_phi(phi, membership.matrix, -cross_entropy, LiraConfig()).variant("offline").auc
    """
    inside = np.asarray(inside, dtype=bool)
    if phi.shape != inside.shape or loss.shape != inside.shape:
        raise MemlocError(f"φ {phi.shape} and LOSS {loss.shape} must match the membership {inside.shape}")
    stats = shadow_statistics(phi, inside)
    scores = attack_scores(phi, stats)
    by_name = {name: getattr(scores, name) for name in VARIANTS[:4]} | {"loss": loss}
    test_scores: dict[str, np.ndarray] = {}
    if config.include_test:
        if test_phi is None or test_loss is None:
            raise MemlocError("include_test needs the test set's φ and LOSS scores")
        mu, sigma = unseen_statistics(test_phi)
        test_scores = {
            "offline": offline_score(test_phi, mu, sigma),
            "offline_fixed": offline_score(test_phi, mu, stats.sigma_out_fixed[:, None]),
            "loss": test_loss,
        }
    summaries = []
    for name in VARIANTS:
        value = by_name[name]
        outside = value[~inside]
        if name in test_scores:
            outside = np.concatenate([outside, test_scores[name].ravel()])
        summaries.append(pooled_roc(name, value[inside], outside, config))
    return LiraResult(targets=inside.shape[0], include_test=config.include_test, variants=tuple(summaries))


def negative_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """log p(label) under ``logits`` (..., C): the LOSS attack's score, larger = more likely a member."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64), axis=-1)
    return np.take_along_axis(logp, np.asarray(labels)[..., None], axis=-1)[..., 0]


def evaluate_lira(ensemble: EnsembleLogits, config: LiraConfig) -> LiraResult:
    """LiRA with every model of ``ensemble`` as target and the rest as shadows, against LOSS.

    Example::

        result = evaluate_lira(ensemble, LiraConfig(include_test=True))
        [(v.variant, v.auc, v.tpr_at_0_1pct) for v in result.variants]
    """
    given = np.broadcast_to(ensemble.given, ensemble.train_logits.shape[:2])
    test_labels = np.broadcast_to(ensemble.test_labels, ensemble.test_logits.shape[:2])
    test_phi = test_loss = None
    if config.include_test:
        test_phi = logit_confidence(ensemble.test_logits, test_labels)
        test_loss = negative_cross_entropy(ensemble.test_logits, test_labels)
    return lira_from_phi(
        logit_confidence(ensemble.train_logits, given),
        ensemble.membership.matrix,
        negative_cross_entropy(ensemble.train_logits, given),
        config,
        test_phi=test_phi,
        test_loss=test_loss,
    )
