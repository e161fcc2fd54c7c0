"""Bipartite graphs (networkx) of what is memorized and where.

- Classifiers: nodes ``example:<id>`` (attribute ``group``: noisy or clean) and
  ``unit:<layer>:<index>``; an edge joins an example to each unit of its flip set.
- Language models: nodes ``fact:<case_id>`` (attribute ``relation``) and
  ``neuron:<layer>:<index>``; an edge (attribute ``score``) joins a fact to each of
  its refined knowledge neurons.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np

if TYPE_CHECKING:
    from memloc.locate.classifier.unit_results import FlipRecord
    from memloc.locate.lm.knowledge_neurons import FactNeurons


def example_unit_graph(records: Iterable[FlipRecord]) -> nx.Graph:
    graph = nx.Graph()
    for rec in records:
        if not rec.flipped:
            continue
        node = f"example:{rec.id}"
        graph.add_node(node, kind="example", group=rec.group, n_units=rec.n_units)
        for layer, index in rec.units:
            unit = f"unit:{layer}:{index}"
            graph.add_node(unit, kind="unit", layer=layer, index=int(index))
            graph.add_edge(node, unit)
    return graph


def share_count(share: float, n: int) -> int:
    """The smallest count k ≥ 1 with k / n ≥ share, robust to float rounding (0.28 × 25 is 7).

    The one rule for "held by at least ``share`` of them": refined knowledge neurons
    (share of a fact's prompts) and relation neurons (share of a relation's facts).
    """
    return max(1, math.ceil(share * n - 1e-9))


@dataclass(frozen=True)
class GroupOverlap:
    """How often two flipped examples of one group share a unit, and their mean Jaccard overlap."""

    examples: int
    pairs: int
    share_any: float | None  # None when the group has fewer than two flipped examples
    mean_jaccard: float | None


@dataclass(frozen=True)
class ComponentSize:
    nodes: int
    examples: int
    units: int


@dataclass(frozen=True)
class SharingStats:
    """Units shared between examples, the largest component, and noisy vs clean sharing.

    Example::

        stats = sharing_stats(example_unit_graph(records))
        stats.noisy.share_any, stats.largest_component.examples
    """

    units: int
    shared_units: int  # units in the flip sets of two or more examples
    max_examples_per_unit: int
    largest_component: ComponentSize
    components: int
    noisy: GroupOverlap
    clean: GroupOverlap
    noisy_share_more_than_clean: bool | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SharingStats:
        return cls(
            **{
                **data,
                "largest_component": ComponentSize(**data["largest_component"]),
                "noisy": GroupOverlap(**data["noisy"]),
                "clean": GroupOverlap(**data["clean"]),
            }
        )


def _within_group_overlap(graph: nx.Graph, group: str) -> GroupOverlap:
    """How often two examples of one group share at least one unit, and their mean Jaccard overlap."""
    examples = [n for n, d in graph.nodes(data=True) if d["kind"] == "example" and d["group"] == group]
    units = {n: set(graph[n]) for n in examples}
    pairs = list(itertools.combinations(examples, 2))
    if not pairs:
        return GroupOverlap(len(examples), 0, None, None)
    shares = [bool(units[a] & units[b]) for a, b in pairs]
    jaccard = [len(units[a] & units[b]) / len(units[a] | units[b]) for a, b in pairs]
    return GroupOverlap(len(examples), len(pairs), float(np.mean(shares)), float(np.mean(jaccard)))


def sharing_stats(graph: nx.Graph) -> SharingStats:
    """Units shared between examples, the largest component, and noisy vs clean sharing."""
    units = [n for n, d in graph.nodes(data=True) if d["kind"] == "unit"]
    degrees = [graph.degree(u) for u in units]
    components = sorted(nx.connected_components(graph), key=len, reverse=True) if graph else []
    largest = components[0] if components else set()
    noisy, clean = _within_group_overlap(graph, "noisy"), _within_group_overlap(graph, "clean")
    more = None
    if noisy.share_any is not None and clean.share_any is not None:
        more = noisy.share_any > clean.share_any
    return SharingStats(
        units=len(units),
        shared_units=int(sum(d >= 2 for d in degrees)),
        max_examples_per_unit=int(max(degrees, default=0)),
        largest_component=ComponentSize(
            nodes=len(largest),
            examples=sum(1 for n in largest if n.startswith("example:")),
            units=sum(1 for n in largest if n.startswith("unit:")),
        ),
        components=len(components),
        noisy=noisy,
        clean=clean,
        noisy_share_more_than_clean=more,
    )


def fact_neuron_graph(facts: Iterable[FactNeurons]) -> nx.Graph:
    """One node per fact and per refined neuron, an edge (with its score) between them.

    Example::

        graph = fact_neuron_graph(knowledge_neurons(lm, facts).facts)
    """
    graph = nx.Graph()
    for fact in facts:
        node = f"fact:{fact.case_id}"
        graph.add_node(node, kind="fact", relation=str(fact.relation), n_neurons=len(fact.neurons))
        for layer, index, score in fact.neurons:
            neuron = f"neuron:{int(layer)}:{int(index)}"
            graph.add_node(neuron, kind="neuron", layer=int(layer), index=int(index))
            graph.add_edge(node, neuron, score=float(score))
    return graph


@dataclass(frozen=True)
class SharedPair:
    """Two facts (case ids) and how many refined neurons they share."""

    facts: tuple[str, str]
    shared: int


@dataclass(frozen=True)
class FactComponent:
    """Size of a connected component of the fact–neuron graph."""

    nodes: int
    facts: int
    neurons: int


@dataclass(frozen=True)
class FactSharing:
    """What `fact_sharing_stats` finds; ``to_dict`` is the JSON the neurons report stores.

    ``relation_neurons`` maps a relation to its (layer, index, facts holding it) rows.
    """

    facts: int
    neurons: int
    shared_neurons: int
    pairs_sharing: tuple[SharedPair, ...]
    same_relation_share_any: float | None
    cross_relation_share_any: float | None
    relation_neurons: dict[str, tuple[tuple[int, int, int], ...]]
    largest_component: FactComponent

    def to_dict(self) -> dict:
        return {
            "facts": self.facts,
            "neurons": self.neurons,
            "shared_neurons": self.shared_neurons,
            "pairs_sharing": [{"facts": list(p.facts), "shared": p.shared} for p in self.pairs_sharing],
            "same_relation_share_any": self.same_relation_share_any,
            "cross_relation_share_any": self.cross_relation_share_any,
            "relation_neurons": {k: [list(row) for row in v] for k, v in self.relation_neurons.items()},
            "largest_component": asdict(self.largest_component),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> FactSharing:
        """Read back what `to_dict` stored."""
        return cls(
            facts=data["facts"],
            neurons=data["neurons"],
            shared_neurons=data["shared_neurons"],
            pairs_sharing=tuple(SharedPair(tuple(p["facts"]), p["shared"]) for p in data["pairs_sharing"]),
            same_relation_share_any=data["same_relation_share_any"],
            cross_relation_share_any=data["cross_relation_share_any"],
            relation_neurons={
                k: tuple((int(a), int(b), int(c)) for a, b, c in v)
                for k, v in data["relation_neurons"].items()
            },
            largest_component=FactComponent(**data["largest_component"]),
        )


def fact_sharing_stats(graph: nx.Graph, *, relation_share: float = 1.0) -> FactSharing:
    """Which facts share neurons, and which neurons serve a whole relation.

    A neuron serves a relation when it is linked to at least ``relation_share`` of
    that relation's facts (and to at least two of them).

    Example::

        sharing = fact_sharing_stats(fact_neuron_graph(found.facts))
        sharing.shared_neurons, sharing.relation_neurons
    """
    facts = [n for n, d in graph.nodes(data=True) if d["kind"] == "fact"]
    relation = {n: graph.nodes[n]["relation"] for n in facts}
    neurons = {n: set(graph[n]) for n in facts}
    same: list[bool] = []
    cross: list[bool] = []
    pairs: list[SharedPair] = []
    for a, b in itertools.combinations(facts, 2):
        shared = neurons[a] & neurons[b]
        (same if relation[a] == relation[b] else cross).append(bool(shared))
        if shared:
            pairs.append(SharedPair((a[5:], b[5:]), len(shared)))
    by_relation: dict[str, list[str]] = {}
    for n in facts:
        by_relation.setdefault(relation[n], []).append(n)
    serving = {}
    for rel, members in sorted(by_relation.items()):
        counts: dict[str, int] = {}
        for n in members:
            for neuron in neurons[n]:
                counts[neuron] = counts.get(neuron, 0) + 1
        need = max(2, share_count(relation_share, len(members)))
        serving[rel] = tuple(
            sorted(
                (graph.nodes[u]["layer"], graph.nodes[u]["index"], c) for u, c in counts.items() if c >= need
            )
        )
    components = sorted(nx.connected_components(graph), key=len, reverse=True) if graph else []
    largest = components[0] if components else set()
    return FactSharing(
        facts=len(facts),
        neurons=sum(1 for _, d in graph.nodes(data=True) if d["kind"] == "neuron"),
        shared_neurons=sum(
            1 for n, d in graph.nodes(data=True) if d["kind"] == "neuron" and graph.degree(n) >= 2
        ),
        pairs_sharing=tuple(sorted(pairs, key=lambda p: -p.shared)),
        same_relation_share_any=float(np.mean(same)) if same else None,
        cross_relation_share_any=float(np.mean(cross)) if cross else None,
        relation_neurons=serving,
        largest_component=FactComponent(
            nodes=len(largest),
            facts=sum(1 for n in largest if n.startswith("fact:")),
            neurons=sum(1 for n in largest if n.startswith("neuron:")),
        ),
    )


def write_graphml(graph: nx.Graph, path: str | Path) -> Path:
    from memloc.core.checkpoints import atomic_write

    return atomic_write(path, lambda tmp: nx.write_graphml(graph, tmp))
