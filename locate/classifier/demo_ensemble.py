"""The demo's ensemble headline: a small subset ensemble of the demo's classifier,
Feldman–Zhang memorization against CSL, and LiRA with every member as the target.

The members train batched (torch.func) unless they hold BatchNorm on a CPU: there the
grouped batched pass BatchNorm needs is slower than one member after another, so those
train sequentially.

Example::

    headline = ensemble_headline(run, torch.device("cpu"), DemoEnsembleConfig())
    headline.fz_auroc, headline.spearman_fz_csl, headline.lira_online.tpr_at_0_1pct
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from memloc.core.classifier.runs import RunFolder
from memloc.core.ensemble.batched import BatchedExecutor, normalizes
from memloc.core.ensemble.config import EnsembleConfig
from memloc.core.ensemble.engine import train_ensemble
from memloc.core.ensemble.folder import load_ensemble
from memloc.core.ensemble.members import build_member
from memloc.core.executors import SequentialExecutor
from memloc.core.progress import Progress
from memloc.core.validation import at_least
from memloc.locate.classifier.lira_attack import RocSummary
from memloc.locate.classifier.memorization import MemorizationConfig, locate_memorization

HEADLINE_MEASURES = ("fz_mem", "influence", "lira")


@dataclass(frozen=True)
class DemoEnsembleConfig:
    models: int = 4
    epochs: int | None = None  # None: the run's own
    seed: int = 0

    def __post_init__(self) -> None:
        at_least(self, 2, "models")
        at_least(self, 1, "epochs")
        at_least(self, 0, "seed")


@dataclass(frozen=True)
class EnsembleHeadline:
    folder: Path
    models: int
    executor: str
    epochs: int
    seconds: float
    fz_auroc: float  # Feldman–Zhang memorization at flagging the mislabeled examples
    csl_auroc: float
    spearman_fz_csl: float
    lira_online: RocSummary
    lira_loss: RocSummary


def ensemble_headline(
    run: RunFolder, device: torch.device, config: DemoEnsembleConfig, *, progress: Progress | None = None
) -> EnsembleHeadline:
    """Train (or finish) the demo's ensemble and read its headline measures (stored for the report)."""
    began = time.perf_counter()
    ensemble = EnsembleConfig(models=config.models, keep=0.5, seed=config.seed, epochs=config.epochs)
    sequential = device.type == "cpu" and normalizes(build_member(run, 0, config.seed))
    executor = SequentialExecutor() if sequential else BatchedExecutor()
    summary = train_ensemble(run, ensemble, executor, device, progress=progress)
    logits = load_ensemble(summary.folder, run)
    result = locate_memorization(
        run, device, MemorizationConfig(measures=HEADLINE_MEASURES), ensembles=(logits,)
    )
    assert result.lira is not None  # asked for above
    variants = {v.variant: v for v in result.lira.variants}
    cmp = result.comparison
    return EnsembleHeadline(
        folder=summary.folder,
        models=summary.models,
        executor=summary.executor,
        epochs=summary.epochs,
        seconds=time.perf_counter() - began,
        fz_auroc=cmp.auroc["fz_mem"],
        csl_auroc=cmp.auroc["csl"],
        spearman_fz_csl=cmp.correlation("fz_mem", "csl"),
        lira_online=variants["online_fixed" if config.models < 64 else "online"],
        lira_loss=variants["loss"],
    )
