"""Example-level memorization scores from recorded learning dynamics.

- Cumulative sample loss (CSL): the sum of an example's loss over the training
  epochs (Ravikumar et al. 2025, "Towards Memorization Estimation: Fast, Formal
  and Free"; mislabel-detection AUROC 0.987 on CIFAR-10 with 10% noise).
- Forgetting events: correct -> incorrect transitions between consecutive epochs
  (Toneva et al. 2019, "An Empirical Study of Example Forgetting").
- Learning time: the first epoch after which the example stays correct (Maini et
  al. 2022, "Characterizing Datapoints via Second-Split Forgetting"); never-learned
  examples get E + 1.
- Loss curvature (optional): mean over Rademacher v of ||grad_x L(x + h v) -
  grad_x L(x)||, h = 1e-3, n = 10 (Garg et al. 2023, "Memorization Through the Lens
  of Curvature of Loss Function Around Samples").

Epochs are the trained epochs 1..E: row 0 of the dynamics is the untrained
initialization, which says nothing about an example. Every score is oriented so
that larger means "more likely memorized", and its AUROC at separating noisy from
clean examples comes from scikit-learn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from memloc.core.checkpoints import atomic_write
from memloc.core.classifier.runs import RunFolder
from memloc.core.classifier.splits import RunData
from memloc.core.errors import MemlocError
from memloc.core.progress import Progress
from memloc.core.report import Report, provenance
from memloc.core.validation import at_least, positive
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

REPORT_PATH = "locate/scores_report.json"  # inside the run folder
SCORES_PATH = "locate/scores.npz"


@dataclass(frozen=True)
class CurvatureConfig:
    h: float = 1e-3
    samples: int = 10
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        positive(self, "h")
        at_least(self, 1, "samples", "batch_size")
        at_least(self, 0, "seed")


@dataclass(frozen=True)
class ScoresResult:
    """What `locate scores` found: each score's AUROC, and the per-example scores.

    ``to_dict`` gives the stored Report's ``config``, ``results`` and ``metrics``. The
    per-example arrays live in RUN_DIR/locate/scores.npz, not in the Report; `load_scores`
    reads both back.

    Example::

        result = locate_scores(RunFolder.open("runs/cnn"), torch.device("cpu"))
        result.auroc["csl"], result.scores["csl"][result.noisy_mask].mean()
    """

    epochs: int  # trained epochs the dynamics cover
    curvature: CurvatureConfig | None
    scores_file: str
    examples: int
    noisy: int  # how many examples are mislabeled
    auroc: dict[str, float]
    scores: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)
    noisy_mask: np.ndarray | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": {
                "epochs": self.epochs,
                "curvature": asdict(self.curvature) if self.curvature is not None else None,
            },
            "results": {"scores_file": self.scores_file, "examples": self.examples, "noisy": self.noisy},
            "metrics": {"auroc": dict(self.auroc)},
        }

    def summary(self) -> dict[str, Any]:
        """What `memloc locate scores --format json` prints."""
        stored = self.to_dict()
        return {**stored["metrics"], **stored["results"]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoresResult:
        config, stored, metrics = data["config"], data["results"], data["metrics"]
        curvature = config["curvature"]
        return cls(
            epochs=config["epochs"],
            curvature=CurvatureConfig(**curvature) if curvature is not None else None,
            scores_file=stored["scores_file"],
            examples=stored["examples"],
            noisy=stored["noisy"],
            auroc=dict(metrics["auroc"]),
        )

    @classmethod
    def from_report(cls, report: Report) -> ScoresResult:
        return cls.from_dict({"config": report.config, "results": report.results, "metrics": report.metrics})


def load_scores(run: RunFolder) -> ScoresResult | None:
    """The stored result of `locate scores` on ``run`` with its per-example arrays; None if absent."""
    path = run.root / REPORT_PATH
    if not path.is_file():
        return None
    result = ScoresResult.from_report(Report.load(path))
    with np.load(run.root / SCORES_PATH) as z:
        arrays = {k: z[k] for k in result.auroc}
        mask = z["noisy"]
    return replace(result, scores=arrays, noisy_mask=mask)


def cumulative_sample_loss(loss: np.ndarray) -> np.ndarray:
    """Sum over trained epochs (rows 1..E of an (E+1, N) loss array)."""
    return loss[1:].astype(np.float64).sum(axis=0)


def forgetting_events(correct: np.ndarray) -> np.ndarray:
    """Number of correct -> incorrect transitions over epochs 1..E."""
    c = correct[1:].astype(bool)
    return (c[:-1] & ~c[1:]).sum(axis=0)


def learning_time(correct: np.ndarray) -> np.ndarray:
    """First epoch t in 1..E from which the example is correct at every later epoch; E+1 if none."""
    c = correct[1:].astype(bool)
    epochs = c.shape[0]
    # stays[t] is True when rows t..E-1 are all correct: a reversed cumulative AND.
    stays = np.flip(np.logical_and.accumulate(np.flip(c, 0), 0), 0)
    first = np.where(stays.any(0), stays.argmax(0) + 1, epochs + 1)
    return first


def loss_curvature(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: CurvatureConfig,
    *,
    progress: Progress | None = None,
) -> np.ndarray:
    """Garg et al.'s input-space curvature proxy, per example, on the model's device.

    Sample s draws its Rademacher directions for the whole set from a generator
    seeded by (seed, s), so results do not depend on the batch size.
    """
    model.eval()
    batches = [slice(i, i + config.batch_size) for i in range(0, len(x), config.batch_size)]

    def input_grad(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        xb = xb.detach().requires_grad_(True)
        # Summed losses: examples are independent in eval mode, so each row's gradient is its own.
        (grad,) = torch.autograd.grad(F.cross_entropy(model(xb), yb, reduction="sum"), xb)
        return grad

    base = torch.cat([input_grad(x[b], y[b]) for b in batches])
    total = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    for sample in range(config.samples):
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + sample)
        signs = torch.randint(0, 2, x.shape, generator=generator, dtype=torch.int8)
        for b in batches:
            v = signs[b].to(x.device, x.dtype) * 2 - 1
            diff = input_grad(x[b] + config.h * v, y[b]) - base[b]
            total[b] += diff.flatten(1).norm(dim=1).double()
        if progress:
            progress(sample + 1, config.samples, "curvature")
    return (total / config.samples).cpu().numpy()


def auroc(scores: np.ndarray, noisy: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` at flagging the noisy examples."""
    if noisy.all() or not noisy.any():
        raise MemlocError("AUROC needs both noisy and clean examples; this run has only one kind")
    return float(roc_auc_score(noisy.astype(int), scores))


def roc(scores: np.ndarray, noisy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(noisy.astype(int), scores)
    return fpr, tpr


def dynamics_scores(loss: np.ndarray, correct: np.ndarray) -> dict[str, np.ndarray]:
    if loss.shape[0] < 2:
        raise MemlocError("scores need at least one trained epoch in the dynamics")
    return {
        "csl": cumulative_sample_loss(loss),
        "forgetting": forgetting_events(correct).astype(np.float64),
        "learning_time": learning_time(correct).astype(np.float64),
    }


def locate_scores(
    run: RunFolder,
    device: torch.device,
    *,
    curvature: CurvatureConfig | None = None,
    progress: Progress | None = None,
) -> ScoresResult:
    """Compute every score of a run, write RUN_DIR/locate/scores.npz, return the typed result.

    result = locate_scores(RunFolder.open("runs/cnn"), torch.device("cpu"), curvature=CurvatureConfig())
    result.auroc["csl"]
    """
    dyn = run.load_dynamics()
    labels, _ = run.load_noise()
    scores = dynamics_scores(dyn.loss, dyn.correct)
    if curvature is not None:
        model, _ = run.load_model()
        data = RunData.load(run, device)
        scores["curvature"] = loss_curvature(
            model.to(device),
            data.x_train,
            data.given,
            curvature,
            progress=progress,
        )
    if run.mask_known():
        aurocs = {name: auroc(values, labels.mask) for name, values in scores.items()}
    else:  # an import without a noise mask: nothing to score against (run.mask_note says so)
        aurocs = {name: float("nan") for name in scores}

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, noisy=labels.mask, **scores)

    path = atomic_write(run.root / SCORES_PATH, write)
    result = ScoresResult(
        epochs=int(dyn.loss.shape[0] - 1),
        curvature=curvature,
        scores_file=str(path),
        examples=len(labels.mask),
        noisy=int(labels.mask.sum()),
        auroc=aurocs,
        scores=scores,
        noisy_mask=labels.mask,
    )
    report = Report(
        method="locate.scores",
        model_id=run.model_id(),
        **result.to_dict(),
        provenance=provenance(run.seed(), {"dynamics": run.dynamics_path}),
    )
    report.save(run.root / REPORT_PATH)
    return result
