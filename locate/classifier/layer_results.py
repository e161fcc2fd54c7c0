"""Typed results of `locate layers`: rewinding and retraining cells, gradient rows.

They turn into JSON only where they are stored (RUN_DIR/locate/layers_report.json and
the resumable cell store) and are read back into the same types. Field order is the
key order of the stored files. A run trained with example-tied dropout adds ``etd``,
what dropping its memorization units does (locate/classifier/etd_effect.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from memloc.core.classifier.splits import Accuracies
from memloc.core.report import Report
from memloc.locate.classifier.etd_effect import EtdEffect
from memloc.locate.classifier.rewinding import GradientRow, LayerCell, RetrainConfig, RewindConfig


def _cells(rows: Sequence[dict[str, Any]]) -> tuple[LayerCell, ...]:
    return tuple(LayerCell.from_dict(r) for r in rows)


@dataclass(frozen=True)
class LayersResult:
    """Everything `locate layers` found, with the config that produced it.

    ``to_dict`` gives the stored Report's ``config``, ``results`` and ``metrics``;
    ``from_report`` reads a stored report back.

    Example::

        result = LayersResult.from_report(Report.load(run.root / REPORT_PATH))
        min(result.rewinding, key=lambda c: c.noisy_acc).layer
    """

    rewind: RewindConfig
    retrain: RetrainConfig | None
    layers: tuple[str, ...]
    rewinding: tuple[LayerCell, ...]
    retraining: tuple[LayerCell, ...]
    gradients: tuple[GradientRow, ...]
    final: Accuracies  # of the final model
    final_epoch: int
    seconds: float
    etd: EtdEffect | None = None  # only for runs trained with example-tied dropout

    def config_dict(self) -> dict[str, Any]:
        return {
            "rewind": asdict(self.rewind),
            "retrain": asdict(self.retrain) if self.retrain is not None else None,
            "layers": list(self.layers),
        }

    def results_dict(self) -> dict[str, Any]:
        tables = {
            "rewinding": [c.to_dict() for c in self.rewinding],
            "retraining": [c.to_dict() for c in self.retraining],
            "gradients": [r.to_dict() for r in self.gradients],
        }
        return tables | ({"etd": self.etd.to_dict()} if self.etd is not None else {})

    def metrics_dict(self) -> dict[str, Any]:
        return {"final": self.final.table_row(), "final_epoch": self.final_epoch, "seconds": self.seconds}

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config_dict(), "results": self.results_dict(), "metrics": self.metrics_dict()}

    def summary(self) -> dict[str, Any]:
        """What `memloc locate layers --format json` prints."""
        return {**self.results_dict(), "final": self.final.table_row(), "config": self.config_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayersResult:
        config, stored, metrics = data["config"], data["results"], data["metrics"]
        rewind = config["rewind"]
        retrain = config["retrain"]
        return cls(
            rewind=RewindConfig(**{**rewind, "epochs": tuple(rewind["epochs"])}),
            retrain=RetrainConfig(**retrain) if retrain is not None else None,
            layers=tuple(config["layers"]),
            rewinding=_cells(stored["rewinding"]),
            retraining=_cells(stored["retraining"]),
            gradients=tuple(GradientRow.from_dict(r) for r in stored["gradients"]),
            final=Accuracies.from_table_row(metrics["final"]),
            final_epoch=metrics["final_epoch"],
            seconds=metrics["seconds"],
            etd=EtdEffect.from_dict(stored["etd"]) if stored.get("etd") else None,
        )

    @classmethod
    def from_report(cls, report: Report) -> LayersResult:
        return cls.from_dict({"config": report.config, "results": report.results, "metrics": report.metrics})
