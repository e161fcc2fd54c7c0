"""Typed results of the fact runners (locate/lm/fact_runs.py), and their stored JSON.

A run stays typed from the runner to the report and the CLI; ``to_dict`` gives the
JSON a `Report` stores as its ``results`` (and ``metrics`` its ``metrics``), and
``from_dict`` reads that JSON back into the same type.

Example::

    run = locate_knowledge_neurons(lm, facts, path, KNConfig())
    assert KNRun.from_dict(run.to_dict()) == run
    run.metrics.mean_neurons, run.sharing.shared_neurons
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

import numpy as np
from memloc.locate.graph import FactSharing
from memloc.locate.lm.knowledge_neurons import FactNeurons
from memloc.locate.lm.tracing import FactTrace, average_best_layer

C = TypeVar("C")

RelationNeurons = dict[str, tuple[tuple[int, int, int], ...]]  # relation -> (layer, index, facts)


def config_from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """A frozen config read back from its stored JSON, where tuples became lists."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class TraceMetrics:
    """Headline numbers of a trace run."""

    best_layer: int | None
    per_fact_best_layer: dict[str, int | None]
    mean_clean_prob: float
    mean_corrupted_prob: float

    def to_dict(self) -> dict:
        return asdict(self)


def _same_trace(a: FactTrace, b: FactTrace) -> bool:
    """Field by field; grids are arrays with NaN for untraced tokens."""
    for f in fields(FactTrace):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "grids":
            if list(x) != list(y) or not all(np.array_equal(x[k], y[k], equal_nan=True) for k in x):
                return False
        elif x != y:
            return False
    return True


@dataclass(frozen=True, eq=False)  # eq by hand: the grids are NaN-holding arrays
class TraceRun:
    """Causal traces of many facts (Meng et al. 2022) and the edit layer they suggest."""

    traces: tuple[FactTrace, ...]
    best_layer: int | None

    @classmethod
    def of(cls, traces: Sequence[FactTrace]) -> TraceRun:
        return cls(tuple(traces), average_best_layer(traces))

    @property
    def metrics(self) -> TraceMetrics:
        return TraceMetrics(
            best_layer=self.best_layer,
            per_fact_best_layer={t.case_id: t.best_layer for t in self.traces},
            mean_clean_prob=float(np.mean([t.clean_prob for t in self.traces])),
            mean_corrupted_prob=float(np.mean([t.corrupted_prob for t in self.traces])),
        )

    def to_dict(self) -> dict:
        return {"best_layer": self.best_layer, "facts": [t.to_dict() for t in self.traces]}

    @classmethod
    def from_dict(cls, data: Mapping) -> TraceRun:
        return cls(tuple(FactTrace.from_dict(f) for f in data["facts"]), data["best_layer"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TraceRun):
            return NotImplemented
        return (
            self.best_layer == other.best_layer
            and len(self.traces) == len(other.traces)
            and all(_same_trace(a, b) for a, b in zip(self.traces, other.traces, strict=True))
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class KNMetrics:
    """Headline numbers of a knowledge-neuron run."""

    facts: int
    mean_neurons: float
    median_neurons: float
    facts_without_neurons: int
    neurons_per_layer: dict[int, int]  # refined neurons of all facts, by layer
    relation_neurons: dict[str, int]  # neurons per relation

    def to_dict(self) -> dict:
        data = asdict(self)
        data["neurons_per_layer"] = {str(k): v for k, v in self.neurons_per_layer.items()}
        return data


@dataclass(frozen=True)
class KNRun:
    """Knowledge neurons (Dai et al. 2022) of every fact, relation neurons and their sharing.

    ``layers`` is the model's number of layers (the report's figure spans them all).
    """

    facts: tuple[FactNeurons, ...]
    relations: RelationNeurons
    sharing: FactSharing
    layers: int

    @property
    def metrics(self) -> KNMetrics:
        per_layer = Counter(layer for f in self.facts for layer, _, _ in f.neurons)
        counts = [len(f.neurons) for f in self.facts]
        return KNMetrics(
            facts=len(self.facts),
            mean_neurons=float(np.mean(counts)),
            median_neurons=float(np.median(counts)),
            facts_without_neurons=sum(c == 0 for c in counts),
            neurons_per_layer={k: per_layer[k] for k in sorted(per_layer)},
            relation_neurons={k: len(v) for k, v in self.relations.items()},
        )

    def to_dict(self) -> dict:
        return {
            "facts": [f.to_dict() for f in self.facts],
            "relations": {k: [list(n) for n in v] for k, v in self.relations.items()},
            "sharing": self.sharing.to_dict(),
            "layers": self.layers,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> KNRun:
        return cls(
            facts=tuple(FactNeurons.from_dict(f) for f in data["facts"]),
            relations={
                k: tuple((int(a), int(b), int(c)) for a, b, c in v) for k, v in data["relations"].items()
            },
            sharing=FactSharing.from_dict(data["sharing"]),
            layers=data["layers"],
        )
