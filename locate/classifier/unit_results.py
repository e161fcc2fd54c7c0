"""Typed results of `locate neurons`: one record per example, a summary per group.

They turn into JSON only where they are stored (RUN_DIR/locate/neurons.jsonl and
neurons_report.json) and are read back into the same types; field order is the key
order of the stored files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from memloc.core.report import Report
from memloc.locate.classifier.unit_search import FlipConfig, FlipResult
from memloc.locate.graph import SharingStats


@dataclass(frozen=True)
class FlipRecord:
    """One example's flip search, as one line of neurons.jsonl.

    Example::

        rec = FlipRecord.of(result, noisy=True)
        rec.n_units, rec.units[0]
    """

    id: int
    group: str  # noisy or clean
    flipped: bool
    units: tuple[tuple[str, int], ...]
    n_units: int
    collateral_drop: float | None  # None where the search measured none
    seconds: float
    reason: str
    steps: int
    extra: dict[str, Any] = field(default_factory=dict)  # mode-specific measurements

    @classmethod
    def of(cls, result: FlipResult, noisy: bool) -> FlipRecord:
        drop = result.collateral_drop
        return cls(
            id=result.index,
            group="noisy" if noisy else "clean",
            flipped=result.flipped,
            units=tuple((layer, int(i)) for layer, i in result.units),
            n_units=len(result.units),
            collateral_drop=None if drop != drop else drop,  # NaN is not JSON
            seconds=result.seconds,
            reason=result.reason,
            steps=result.steps,
            extra=dict(result.extra),
        )

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out["units"] = [[layer, i] for layer, i in self.units]
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlipRecord:
        names = [f.name for f in fields(cls) if f.name != "extra"]
        known = {k: data[k] for k in names}
        known["units"] = tuple((layer, int(i)) for layer, i in data["units"])
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})


@dataclass(frozen=True)
class GroupSummary:
    """Flip rate, units per flipped example, per-layer share of units, collateral, for one group."""

    examples: int
    flip_rate: float
    outcomes: dict[str, int]  # how many searches ended for each reason
    mean_units: float | None  # None when no example flipped
    median_units: float | None
    layer_share: dict[str, float]
    mean_collateral_drop: float | None
    seconds_per_example: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupSummary:
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    def table_row(self, group: str) -> dict[str, Any]:
        """The scalar fields, as one row of the per-group table."""
        skip = ("layer_share", "outcomes")
        return {"group": group, **{k: v for k, v in self.to_dict().items() if k not in skip}}


@dataclass(frozen=True)
class NeuronsResult:
    """Everything `locate neurons` found, with the options that produced it.

    ``to_dict`` gives the stored Report's ``config``, ``results`` and ``metrics``;
    ``from_report`` reads a stored report back.

    Example::

        result = locate_neurons(RunFolder.open("runs/cnn"), torch.device("cpu"), FlipConfig(), n=20)
        result.noisy.median_units, result.sharing.shared_units
    """

    flip: FlipConfig
    examples: str
    n: int
    records: tuple[FlipRecord, ...]
    sharing: SharingStats
    graphml: str
    jsonl: str
    noisy: GroupSummary | None  # None when no noisy example was searched
    clean: GroupSummary | None

    def groups(self) -> dict[str, GroupSummary]:
        """The summaries of the groups that were searched, noisy first."""
        pairs = (("noisy", self.noisy), ("clean", self.clean))
        return {name: summary for name, summary in pairs if summary is not None}

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": {"flip": asdict(self.flip), "examples": self.examples, "n": self.n},
            "results": {
                "records": [r.to_dict() for r in self.records],
                "sharing": self.sharing.to_dict(),
                "graphml": self.graphml,
                "jsonl": self.jsonl,
            },
            "metrics": {name: s.to_dict() for name, s in self.groups().items()},
        }

    def summary(self) -> dict[str, Any]:
        """What `memloc locate neurons --format json` prints."""
        groups = {name: s.to_dict() for name, s in self.groups().items()}
        return {**groups, "sharing": self.sharing.to_dict(), "jsonl": self.jsonl}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NeuronsResult:
        config, stored, metrics = data["config"], data["results"], data["metrics"]
        noisy, clean = metrics.get("noisy"), metrics.get("clean")
        return cls(
            flip=FlipConfig(**config["flip"]),
            examples=config["examples"],
            n=config["n"],
            records=tuple(FlipRecord.from_dict(r) for r in stored["records"]),
            sharing=SharingStats.from_dict(stored["sharing"]),
            graphml=stored["graphml"],
            jsonl=stored["jsonl"],
            noisy=GroupSummary.from_dict(noisy) if noisy is not None else None,
            clean=GroupSummary.from_dict(clean) if clean is not None else None,
        )

    @classmethod
    def from_report(cls, report: Report) -> NeuronsResult:
        return cls.from_dict({"config": report.config, "results": report.results, "metrics": report.metrics})
