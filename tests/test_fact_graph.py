"""The fact–neuron graph: shared neurons, relation neurons, GraphML export."""

from __future__ import annotations

import json

import networkx as nx
from memloc.locate.graph import (
    FactComponent,
    FactSharing,
    fact_neuron_graph,
    fact_sharing_stats,
    write_graphml,
)
from memloc.locate.lm.knowledge_neurons import FactNeurons, relation_neurons


def _fact(case_id: str, relation: str, neurons: list[tuple[int, int, float]]) -> FactNeurons:
    return FactNeurons(case_id, relation, "t", ["p"], [0.5], neurons, [[(n[0], n[1]) for n in neurons]], {})


FACTS = [
    _fact("a", "capital", [(3, 7, 0.9), (5, 1, 0.4)]),
    _fact("b", "capital", [(3, 7, 0.8), (4, 2, 0.5)]),
    _fact("c", "capital", [(3, 7, 0.7)]),
    _fact("d", "language", [(5, 1, 0.3), (6, 6, 0.9)]),
    _fact("e", "language", [(0, 0, 0.2)]),
]


def test_sharing_and_relation_neurons():
    graph = fact_neuron_graph(FACTS)
    stats = fact_sharing_stats(graph)
    assert stats.facts == 5 and stats.neurons == 5
    assert stats.shared_neurons == 2  # 3:7 (a, b, c) and 5:1 (a, d)
    # Neuron 3:7 is in every capital fact; no neuron is in both language facts.
    assert stats.relation_neurons == {"capital": ((3, 7, 3),), "language": ()}
    shared = {p.facts: p.shared for p in stats.pairs_sharing}
    assert shared == {("a", "b"): 1, ("a", "c"): 1, ("b", "c"): 1, ("a", "d"): 1}
    assert stats.same_relation_share_any == 3 / 4  # a-b, a-c, b-c share; d-e do not
    assert stats.cross_relation_share_any == 1 / 6
    assert stats.largest_component == FactComponent(nodes=8, facts=4, neurons=4)


def test_sharing_json_keeps_its_keys_and_reads_back():
    stats = fact_sharing_stats(fact_neuron_graph(FACTS))
    data = json.loads(json.dumps(stats.to_dict()))
    assert list(data) == [
        "facts",
        "neurons",
        "shared_neurons",
        "pairs_sharing",
        "same_relation_share_any",
        "cross_relation_share_any",
        "relation_neurons",
        "largest_component",
    ]
    assert data["relation_neurons"] == {"capital": [[3, 7, 3]], "language": []}
    assert data["pairs_sharing"][0] == {"facts": ["a", "b"], "shared": 1}
    assert data["largest_component"] == {"nodes": 8, "facts": 4, "neurons": 4}
    assert FactSharing.from_dict(data) == stats


def test_relation_share_threshold():
    stats = fact_sharing_stats(fact_neuron_graph(FACTS), relation_share=0.5)
    assert stats.relation_neurons["capital"] == ((3, 7, 3),)


def test_graphml_round_trip(tmp_path):
    path = write_graphml(fact_neuron_graph(FACTS), tmp_path / "facts.graphml")
    back = nx.read_graphml(path)
    assert back.number_of_edges() == 8
    assert back.nodes["fact:d"]["relation"] == "language"
    assert back.edges["fact:a", "neuron:3:7"]["score"] == 0.9


def test_graph_and_relation_neurons_apply_one_share_rule():
    """A neuron held by exactly share × n facts serves the relation in both places.

    With share 0.28 and 25 facts, 0.28 × 25 is 7.000000000000001 in floating point: a
    plain ceil asks for 8 facts, the rule asks for 7.
    """
    facts = [_fact(f"f{i}", "capital", [(1, 1, 0.5)] if i < 7 else [(2, i, 0.5)]) for i in range(25)]
    by_graph = fact_sharing_stats(fact_neuron_graph(facts), relation_share=0.28).relation_neurons
    by_rule = relation_neurons(
        {f.case_id: f.neuron_set() for f in facts}, {f.case_id: f.relation for f in facts}, 0.28
    )
    assert by_rule == {"capital": [(1, 1, 7)]}
    assert [tuple(n) for n in by_graph["capital"]] == by_rule["capital"]
