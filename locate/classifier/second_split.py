"""Second-split forgetting time, SSFT (Maini et al. 2022, "Characterizing Datapoints via
Second-Split Forgetting", NeurIPS), and the forgetting rate measured on the way.

The training set is split into two seeded halves A and B. A fresh model trains on A
(the run's training config unless overridden), then fine-tunes on B for F epochs; after
each fine-tuning epoch every example of A is checked against its given label. Then the
same with the halves swapped, so that every training example gets one SSFT.

Row 0 of a correctness array (F + 1, n) is the model right after training on the first
half, row t the model after fine-tuning epoch t. SSFT_i is the first fine-tuning epoch
after which example i is never correct again: 1 + the last row where it is correct,
provided it is incorrect at row F. Otherwise SSFT_i is ``F + 1``, the sentinel for
"never": for an example still correct after the last epoch (never forgotten) and,
following the issue's wording, for one never correct at all (never learned, so never
forgotten either). The score ``F + 1 − SSFT`` orients it like every memorization score:
0 for "never", F for an example forgotten in the first epoch. Mislabeled examples are
forgotten fast, rare ones slowly, typical ones never.

When an ensemble of shadow models (`EnsembleLogits` on the same run's examples) is
given, the forgetting rate (locate/classifier/forgetting_rate.py) is measured on the
same fine-tunings: offline LiRA's success at telling the first half's examples from the
test set, per fine-tuning epoch.

Example::

    result = second_split_forgetting(RunFolder.open("runs/mlp"), torch.device("cpu"), SecondSplitConfig())
    result.score[result.noisy].mean() > result.score[~result.noisy].mean()
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from memloc.core.classifier.model_source import build_classifier
from memloc.core.classifier.runs import RunFolder
from memloc.core.classifier.splits import RunData
from memloc.core.ensemble.logits import EnsembleLogits
from memloc.core.errors import MemlocError
from memloc.core.progress import Progress, labelled
from memloc.core.training.subset_fit import FitConfig, fit
from memloc.core.validation import at_least, in_unit_interval, positive
from memloc.locate.classifier.forgetting_rate import AttackCurve, OutFits, attack_curve, out_fits
from memloc.locate.classifier.lira import logit_confidence
from memloc.locate.classifier.scores import auroc
from torch import nn


@dataclass(frozen=True)
class SecondSplitConfig:
    """``epochs``, ``lr``, ``batch_size``, ``weight_decay``: the first-half training (None: the
    run's; for ``epochs`` twice the run's, so that the half set gets the run's number of
    steps and is fit the way the run fit the whole set, as SSFT assumes);
    ``finetune_lr``: the second-half fine-tune's (None: the training lr)."""

    finetune_epochs: int = 10
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    weight_decay: float | None = None
    finetune_lr: float | None = None
    seed: int = 0
    fpr: float = 0.01  # where the forgetting rate reads the attack's TPR
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        at_least(self, 1, "finetune_epochs", "epochs", "batch_size", "eval_batch_size")
        at_least(self, 0, "weight_decay", "seed")
        positive(self, "lr", "finetune_lr", "fpr")
        in_unit_interval(self, "fpr")

    def fit_configs(self, train: dict) -> tuple[FitConfig, FitConfig]:
        """The first-half training and the fine-tuning, from the run's training config ``train``."""
        lr = self.lr if self.lr is not None else float(train["lr"])
        batch = self.batch_size if self.batch_size is not None else int(train["batch_size"])
        decay = self.weight_decay if self.weight_decay is not None else float(train.get("weight_decay", 0.0))
        epochs = self.epochs if self.epochs is not None else 2 * int(train["epochs"])
        tune_lr = self.finetune_lr if self.finetune_lr is not None else lr
        return (
            FitConfig(epochs, batch, lr, decay, self.seed),
            FitConfig(self.finetune_epochs, batch, tune_lr, decay, self.seed),
        )


@dataclass(frozen=True)
class SecondSplitResult:
    """Every training example's SSFT, from the direction in which it was in the first half.

    ``correct[:, i]`` is example i's correctness curve over that direction's fine-tuning
    (row 0 before it); ``half[i]`` is 0 when i is in A, 1 in B. ``forgetting`` holds one
    attack curve per direction (A then B, B then A), or None without an ensemble.
    """

    config: SecondSplitConfig
    examples: int
    auroc: float  # of the score at flagging the noisy examples (NaN when the run has one kind only)
    forgetting: tuple[AttackCurve, AttackCurve] | None
    ssft: np.ndarray = field(compare=False, repr=False)  # (N,) int in 1..F+1; F+1 = "never"
    score: np.ndarray = field(compare=False, repr=False)  # (N,) F + 1 − SSFT
    correct: np.ndarray = field(compare=False, repr=False)  # (F+1, N) bool
    half: np.ndarray = field(compare=False, repr=False)  # (N,) int8
    noisy: np.ndarray = field(compare=False, repr=False)  # (N,) bool

    @property
    def never(self) -> int:
        """The SSFT that means "never forgotten"."""
        return self.config.finetune_epochs + 1

    def still_correct(self, mask: np.ndarray) -> np.ndarray:
        """(F+1,) the fraction of the masked examples correct at each fine-tuning epoch."""
        return self.correct[:, mask].mean(1)


def forgetting_times(correct: np.ndarray) -> np.ndarray:
    """SSFT of each column of an (F+1, n) correctness array; F+1 ("never") as the module says."""
    c = np.asarray(correct, dtype=bool)
    if c.ndim != 2 or len(c) < 2:
        raise MemlocError(
            "a correctness array needs rows for before and after at least one fine-tuning epoch"
        )
    never = len(c)  # F + 1
    last_correct = never - 1 - np.flip(c, 0).argmax(0)
    forgotten = c.any(0) & ~c[-1]
    return np.where(forgotten, last_correct + 1, never)


def forgetting_score(ssft: np.ndarray, finetune_epochs: int) -> np.ndarray:
    """F + 1 − SSFT: larger for examples forgotten sooner; 0 for "never"."""
    return (finetune_epochs + 1 - np.asarray(ssft)).astype(np.float64)


def split_halves(examples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two seeded halves of 0..examples-1, each sorted; A takes the extra example of an odd count."""
    if examples < 2:
        raise MemlocError("second-split forgetting needs at least two training examples")
    perm = np.random.default_rng(seed).permutation(examples)
    cut = (examples + 1) // 2
    return np.sort(perm[:cut]), np.sort(perm[cut:])


@dataclass(frozen=True)
class _Direction:
    correct: np.ndarray  # (F+1, n_first)
    member_phi: np.ndarray | None  # (F+1, n_first): the target's φ on the first half
    test_phi: np.ndarray | None  # (F+1, M)


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> np.ndarray:
    rows = [model(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)]
    return torch.cat(rows).cpu().numpy()


def _run_direction(
    model: nn.Module,
    data: RunData,
    first: np.ndarray,
    second: np.ndarray,
    configs: tuple[FitConfig, FitConfig],
    *,
    attack: bool,
    eval_batch_size: int,
    progress: Progress | None,
) -> _Direction:
    """Train ``model`` on ``first``, fine-tune it on ``second``; record the first half after each epoch."""
    given = data.labels.given[first]
    x_first = data.x_train[torch.as_tensor(first, device=data.x_train.device)]
    y_test = data.y_test.cpu().numpy()
    correct, member_phi, test_phi = [], [], []

    def record(_epoch: int, m: nn.Module) -> None:
        m.eval()
        logits = _logits(m, x_first, eval_batch_size)
        correct.append(logits.argmax(-1) == given)
        if attack:
            member_phi.append(logit_confidence(logits, given))
            test_phi.append(logit_confidence(_logits(m, data.x_test, eval_batch_size), y_test))
        m.train()

    fit(model, data.x_train, data.given, first, configs[0], progress=labelled(progress, "first half"))
    record(0, model)
    fit(
        model,
        data.x_train,
        data.given,
        second,
        configs[1],
        on_epoch=record,
        progress=labelled(progress, "fine-tune"),
    )
    return _Direction(
        np.array(correct), np.array(member_phi) if attack else None, np.array(test_phi) if attack else None
    )


def _check_ensemble(ensemble: EnsembleLogits, data: RunData) -> OutFits:
    if not np.array_equal(ensemble.given, data.labels.given) or not np.array_equal(
        ensemble.test_labels, data.y_test.cpu().numpy()
    ):
        raise MemlocError("the ensemble's labels are not this run's; pass an ensemble trained on this run")
    return out_fits(ensemble)


def second_split_forgetting(
    run: RunFolder,
    device: torch.device,
    config: SecondSplitConfig,
    *,
    ensemble: EnsembleLogits | None = None,
    progress: Progress | None = None,
) -> SecondSplitResult:
    """SSFT of every training example of ``run`` (both directions), with the forgetting rate if ``ensemble``."""
    data = RunData.load(run, device)
    fits = _check_ensemble(ensemble, data) if ensemble is not None else None
    configs = config.fit_configs(run.config()["train"])
    n = len(data.labels.given)
    halves = split_halves(n, config.seed)
    correct = np.zeros((config.finetune_epochs + 1, n), dtype=bool)
    half = np.zeros(n, dtype=np.int8)
    curves = []
    for d, (first, second) in enumerate((halves, halves[::-1])):
        torch.manual_seed(config.seed * 2 + d)  # a fresh seeded init per direction
        model = build_classifier(run.spec()).to(device)
        result = _run_direction(
            model,
            data,
            first,
            second,
            configs,
            attack=fits is not None,
            eval_batch_size=config.eval_batch_size,
            progress=labelled(progress, f"direction {d + 1}/2"),
        )
        correct[:, first] = result.correct
        half[first] = d
        if fits is not None and result.member_phi is not None and result.test_phi is not None:
            curves.append(
                attack_curve(result.member_phi, result.test_phi, fits.train(first), fits.test, config.fpr)
            )
    ssft = forgetting_times(correct)
    score = forgetting_score(ssft, config.finetune_epochs)
    noisy = data.labels.mask
    quality = auroc(score, noisy) if noisy.any() and not noisy.all() else float("nan")
    forgetting = (curves[0], curves[1]) if curves else None
    return SecondSplitResult(config, n, quality, forgetting, ssft, score, correct, half, noisy)
