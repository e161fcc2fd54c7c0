"""Per-example memorization read from a subset ensemble: the in/out contrasts of
/work/shared/ALGORITHMS.md part D.

- Label memorization (Feldman & Zhang 2020, "What Neural Networks Memorize and Why"):
  mem_i = P(correct on x_i | i in) − P(correct on x_i | i out), "correct" meaning the
  argmax equals the given (trained, possibly noisy) label.
- C-score (Jiang et al. 2021, "Characterizing Structural Regularities of Labeled Data in
  Overparameterized Models"): P(correct | i out), averaged over ensembles of several
  keep ratios when given more than one.
- Counterfactual memorization (Zhang et al. 2023, "Counterfactual Memorization in Neural
  Language Models"): the in/out difference of the softmax probability of the given label.

Every probability is a mean over the ensemble's models; an example needs at least
``min_models`` models in and out (the configs' field), else one `MemlocError` says which.

Example::

    result = label_memorization(ensemble, LabelMemorizationConfig())
    result.mem[noisy].mean(), result.mean
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from memloc.core.ensemble.logits import EnsembleLogits
from memloc.core.errors import MemlocError
from memloc.core.validation import at_least, in_unit_interval
from scipy.special import log_softmax

PAPER_MEM_THRESHOLD = 0.25  # Feldman & Zhang 2020's "memorized" cut, also used for influence pairs


def require_in_and_out(membership: np.ndarray, min_in: int = 1, min_out: int = 1) -> None:
    """Raise one `MemlocError` naming the first example with too few in (or out) models."""
    matrix = np.asarray(membership, dtype=bool)
    for count, need, side in ((matrix.sum(0), min_in, "in"), ((~matrix).sum(0), min_out, "out")):
        short = np.flatnonzero(count < need)
        if len(short):
            i = int(short[0])
            raise MemlocError(
                f"training example {i} (and {len(short) - 1} more) has {int(count[i])} models {side} "
                f"of {matrix.shape[0]}, this measure needs at least {need}: train more models, "
                "or a keep ratio further from 0 and 1"
            )


def in_out_means(values: np.ndarray, membership: np.ndarray, min_models: int = 1) -> tuple[np.ndarray, ...]:
    """Per-example means of ``values`` (K, N) over the in models and over the out models."""
    inside = np.asarray(membership, dtype=bool)
    require_in_and_out(inside, min_models, min_models)
    v = np.asarray(values, dtype=np.float64)
    n_in = inside.sum(0)
    sum_in = np.where(inside, v, 0.0).sum(0)
    sum_out = v.sum(0) - sum_in
    return sum_in / n_in, sum_out / (inside.shape[0] - n_in)


def given_probability(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Softmax probability of ``labels`` under ``logits`` (..., C), float64."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64), axis=-1)
    return np.exp(np.take_along_axis(logp, np.asarray(labels)[..., None], axis=-1)[..., 0])


@dataclass(frozen=True)
class LabelMemorizationConfig:
    min_models: int = 1  # in and out models each example needs
    threshold: float = PAPER_MEM_THRESHOLD  # mem at or above it counts as memorized in the summary

    def __post_init__(self) -> None:
        at_least(self, 1, "min_models")
        in_unit_interval(self, "threshold")


@dataclass(frozen=True)
class LabelMemorization:
    """mem (N,) in [−1, 1], larger = more memorized; ``p_in``/``p_out`` its two terms."""

    models: int
    mean: float
    memorized: int  # examples with mem >= threshold
    threshold: float
    mem: np.ndarray = field(compare=False, repr=False)
    p_in: np.ndarray = field(compare=False, repr=False)
    p_out: np.ndarray = field(compare=False, repr=False)


def label_memorization(ensemble: EnsembleLogits, config: LabelMemorizationConfig) -> LabelMemorization:
    """Feldman & Zhang's estimator over the ensemble's models; larger = more memorized.

    Example::

        mem = label_memorization(ensemble, LabelMemorizationConfig()).mem
    """
    p_in, p_out = in_out_means(ensemble.train_correct(), ensemble.membership.matrix, config.min_models)
    mem = p_in - p_out
    return LabelMemorization(
        models=ensemble.models,
        mean=float(mem.mean()),
        memorized=int((mem >= config.threshold).sum()),
        threshold=config.threshold,
        mem=mem,
        p_in=p_in,
        p_out=p_out,
    )


@dataclass(frozen=True)
class CScoreConfig:
    min_models: int = 1  # out models each example needs in every ensemble

    def __post_init__(self) -> None:
        at_least(self, 1, "min_models")


@dataclass(frozen=True)
class CScore:
    """C-score (N,) in [0, 1]: LOW flags mislabeled or atypical examples (``memorized`` = 1 − score).

    ``per_ensemble`` (R, N) holds each ensemble's held-out accuracy, ``keeps`` their keep ratios.
    """

    keeps: tuple[float, ...]
    mean: float
    score: np.ndarray = field(compare=False, repr=False)
    per_ensemble: np.ndarray = field(compare=False, repr=False)

    @property
    def memorized(self) -> np.ndarray:
        """1 − C-score, oriented like the other measures: larger = more likely memorized."""
        return 1.0 - self.score


def c_score(ensembles: EnsembleLogits | Sequence[EnsembleLogits], config: CScoreConfig) -> CScore:
    """Expected held-out accuracy per example, averaged over ensembles (e.g. keep 0.1 ... 0.9).

    Every ensemble must cover the same training examples with the same given labels.

    Example::

        c = c_score([ens_30, ens_50, ens_70], CScoreConfig())
        c.score.argsort()[:20]  # the 20 least regular examples
    """
    group = [ensembles] if isinstance(ensembles, EnsembleLogits) else list(ensembles)
    if not group:
        raise MemlocError("C-score needs at least one ensemble")
    first = group[0].given
    rows = []
    for ens in group:
        if ens.given.shape != first.shape or not np.array_equal(ens.given, first):
            raise MemlocError("the ensembles of a C-score must share their training examples and labels")
        inside = ens.membership.matrix
        require_in_and_out(inside, 0, config.min_models)
        correct = ens.train_correct()
        rows.append(np.where(inside, 0.0, correct).sum(0) / (~inside).sum(0))
    per = np.stack(rows)
    score = per.mean(0)
    return CScore(
        keeps=tuple(float(e.membership.config.keep) for e in group),
        mean=float(score.mean()),
        score=score,
        per_ensemble=per,
    )


@dataclass(frozen=True)
class CounterfactualConfig:
    min_models: int = 1  # in and out models each example needs

    def __post_init__(self) -> None:
        at_least(self, 1, "min_models")


@dataclass(frozen=True)
class Counterfactual:
    """The in/out difference (N,) of p(given label), in [−1, 1]; larger = more memorized."""

    models: int
    mean: float
    score: np.ndarray = field(compare=False, repr=False)
    p_in: np.ndarray = field(compare=False, repr=False)
    p_out: np.ndarray = field(compare=False, repr=False)


def counterfactual_memorization(ensemble: EnsembleLogits, config: CounterfactualConfig) -> Counterfactual:
    """Zhang et al. 2023's counterfactual memorization with M = softmax probability of the given label.

    Example::

        cf = counterfactual_memorization(ensemble, CounterfactualConfig()).score
    """
    prob = given_probability(
        ensemble.train_logits, np.broadcast_to(ensemble.given, ensemble.train_logits.shape[:2])
    )
    p_in, p_out = in_out_means(prob, ensemble.membership.matrix, config.min_models)
    score = p_in - p_out
    return Counterfactual(
        models=ensemble.models, mean=float(score.mean()), score=score, p_in=p_in, p_out=p_out
    )
