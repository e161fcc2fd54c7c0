"""Typed records of a training run: one row per epoch, and the run's summary.

They become JSON (or the plain dicts of train_state.pt) only where they are stored,
with ``to_dict``, and are read back with ``from_dict``; the key order of the stored
files is the field order here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from memloc.core.report import Report


@dataclass(frozen=True)
class EpochRecord:
    """Accuracies and mean training loss after one epoch (epoch 0: the initialization).

    Example::

        row = EpochRecord.from_dict(report.results["history"][-1])
        row.noisy_train_acc
    """

    epoch: int
    clean_train_acc: float
    noisy_train_acc: float
    noisy_orig_acc: float
    test_acc: float
    train_loss: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochRecord:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class TrainSummary:
    """A run's final-epoch accuracies and size; metrics.json's ``metrics`` and `memloc train`'s output.

    Example::

        summary = train_run(RunFolder("runs/cnn"), config, torch.device("cpu"))
        summary.noisy_train_acc
    """

    clean_train_acc: float
    noisy_train_acc: float
    noisy_orig_acc: float
    test_acc: float
    epochs: int
    seconds: float
    train_examples: int
    noisy_examples: int
    complete: bool
    run_dir: str

    @classmethod
    def of(
        cls,
        history: Sequence[EpochRecord],
        train_examples: int,
        noisy_examples: int,
        complete: bool,
        run_dir: str,
    ) -> TrainSummary:
        final = history[-1]
        return cls(
            clean_train_acc=final.clean_train_acc,
            noisy_train_acc=final.noisy_train_acc,
            noisy_orig_acc=final.noisy_orig_acc,
            test_acc=final.test_acc,
            epochs=final.epoch,
            seconds=round(sum(h.seconds for h in history), 3),
            train_examples=train_examples,
            noisy_examples=noisy_examples,
            complete=complete,
            run_dir=run_dir,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSummary:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class TrainResult:
    """What metrics.json holds beyond the config: the per-epoch history and the summary.

    Example::

        result = TrainResult.from_report(Report.load(run.metrics_path))
        [h.test_acc for h in result.history]
    """

    history: tuple[EpochRecord, ...]
    summary: TrainSummary

    def results_dict(self) -> dict[str, Any]:
        """The stored Report's ``results``."""
        return {"history": [h.to_dict() for h in self.history]}

    @classmethod
    def from_report(cls, report: Report) -> TrainResult:
        """Read back a stored metrics.json Report."""
        stored = report.results
        return cls(
            tuple(EpochRecord.from_dict(h) for h in stored["history"]), TrainSummary.from_dict(report.metrics)
        )
