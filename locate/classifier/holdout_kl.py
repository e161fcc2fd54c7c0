"""Holdout-retraining KL (survey §3.1): how far a fine-tune on held-out data moves each
training example's prediction.

The final model f is fine-tuned on the TEST split (core/training/subset_fit.fit) to give
f'; per training example i the score is the symmetric KL divergence

    KL(p_i || p'_i) + KL(p'_i || p_i),   p_i = softmax f(x_i), p'_i = softmax f'(x_i).

An example f fits only because it memorized it moves most when training continues on
data that does not contain it, so larger means "more likely memorized".

Example::

    result = locate_holdout_kl(RunFolder.open("runs/mlp"), torch.device("cpu"), HoldoutKLConfig())
    result.auroc, result.kl[result.noisy].mean()
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from memloc.core.classifier.runs import RunFolder
from memloc.core.classifier.splits import RunData
from memloc.core.progress import Progress
from memloc.core.training.subset_fit import FitConfig, fit
from memloc.core.validation import at_least, positive
from memloc.locate.classifier.scores import auroc
from torch import nn


@dataclass(frozen=True)
class HoldoutKLConfig:
    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    seed: int = 0
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        at_least(self, 1, "epochs", "batch_size", "eval_batch_size")
        at_least(self, 0, "weight_decay", "seed")
        positive(self, "lr")

    def fit_config(self) -> FitConfig:
        return FitConfig(self.epochs, self.batch_size, self.lr, self.weight_decay, self.seed)


@dataclass(frozen=True)
class HoldoutKLResult:
    """Per training example the symmetric KL between f and its test-split fine-tune f'."""

    config: HoldoutKLConfig
    examples: int
    auroc: float  # of the KL at flagging the noisy examples (NaN when the run has one kind only)
    kl: np.ndarray = field(compare=False, repr=False)  # (N,) float64
    noisy: np.ndarray = field(compare=False, repr=False)  # (N,) bool


def symmetric_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Row-wise KL(p||q) + KL(q||p) of the softmaxes of two (N, C) logit arrays, in float64."""
    log_p = torch.log_softmax(logits_p.double(), -1)
    log_q = torch.log_softmax(logits_q.double(), -1)
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1)


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)])


def prediction_shift(
    model: nn.Module, tuned: nn.Module, x: torch.Tensor, batch_size: int = 1024
) -> np.ndarray:
    """Symmetric KL between two models' predictions on each row of ``x``."""
    return symmetric_kl(_logits(model, x, batch_size), _logits(tuned, x, batch_size)).cpu().numpy()


def holdout_kl(
    model: nn.Module,
    x_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    config: HoldoutKLConfig,
    *,
    progress: Progress | None = None,
) -> np.ndarray:
    """Fine-tune a copy of ``model`` on (x_test, y_test); each training row's symmetric KL. ``model`` is kept."""
    tuned = copy.deepcopy(model)
    fit(tuned, x_test, y_test, np.arange(len(x_test)), config.fit_config(), progress=progress)
    return prediction_shift(model, tuned, x_train, config.eval_batch_size)


def locate_holdout_kl(
    run: RunFolder,
    device: torch.device,
    config: HoldoutKLConfig,
    *,
    progress: Progress | None = None,
) -> HoldoutKLResult:
    """Holdout-retraining KL of every training example of a run's final model."""
    model, _ = run.load_model()
    data = RunData.load(run, device)
    kl = holdout_kl(model.to(device), data.x_train, data.x_test, data.y_test, config, progress=progress)
    noisy = data.labels.mask
    score = auroc(kl, noisy) if noisy.any() and not noisy.all() else float("nan")
    return HoldoutKLResult(config, len(kl), score, kl, noisy)
