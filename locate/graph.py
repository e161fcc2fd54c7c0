"""The bipartite graph of examples and the units that flip them (networkx).

Nodes ``example:<id>`` (attribute ``group``: noisy or clean) and
``unit:<layer>:<index>`` (attribute ``layer``); an edge joins an example to each
unit of its flip set.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

import networkx as nx
import numpy as np


def example_unit_graph(records: Iterable[dict]) -> nx.Graph:
    graph = nx.Graph()
    for rec in records:
        if not rec["flipped"]:
            continue
        node = f"example:{rec['id']}"
        graph.add_node(node, kind="example", group=rec["group"], n_units=rec["n_units"])
        for layer, index in rec["units"]:
            unit = f"unit:{layer}:{index}"
            graph.add_node(unit, kind="unit", layer=layer, index=int(index))
            graph.add_edge(node, unit)
    return graph


def _within_group_overlap(graph: nx.Graph, group: str) -> dict:
    """How often two examples of one group share at least one unit, and their mean Jaccard overlap."""
    examples = [n for n, d in graph.nodes(data=True) if d["kind"] == "example" and d["group"] == group]
    units = {n: set(graph[n]) for n in examples}
    pairs = list(itertools.combinations(examples, 2))
    if not pairs:
        return {"examples": len(examples), "pairs": 0, "share_any": None, "mean_jaccard": None}
    shares = [bool(units[a] & units[b]) for a, b in pairs]
    jaccard = [len(units[a] & units[b]) / len(units[a] | units[b]) for a, b in pairs]
    return {
        "examples": len(examples),
        "pairs": len(pairs),
        "share_any": float(np.mean(shares)),
        "mean_jaccard": float(np.mean(jaccard)),
    }


def sharing_stats(graph: nx.Graph) -> dict:
    """Units shared between examples, the largest component, and noisy vs clean sharing."""
    units = [n for n, d in graph.nodes(data=True) if d["kind"] == "unit"]
    degrees = [graph.degree(u) for u in units]
    components = sorted(nx.connected_components(graph), key=len, reverse=True) if graph else []
    largest = components[0] if components else set()
    noisy, clean = _within_group_overlap(graph, "noisy"), _within_group_overlap(graph, "clean")
    more = None
    if noisy["share_any"] is not None and clean["share_any"] is not None:
        more = noisy["share_any"] > clean["share_any"]
    return {
        "units": len(units),
        "shared_units": int(sum(d >= 2 for d in degrees)),
        "max_examples_per_unit": int(max(degrees, default=0)),
        "largest_component": {
            "nodes": len(largest),
            "examples": sum(1 for n in largest if n.startswith("example:")),
            "units": sum(1 for n in largest if n.startswith("unit:")),
        },
        "components": len(components),
        "noisy": noisy,
        "clean": clean,
        "noisy_share_more_than_clean": more,
    }


def write_graphml(graph: nx.Graph, path: str | Path) -> Path:
    from memloc.core.checkpoints import atomic_write

    return atomic_write(path, lambda tmp: nx.write_graphml(graph, tmp))
