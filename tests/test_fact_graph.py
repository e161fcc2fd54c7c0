"""The fact–neuron graph: shared neurons, relation neurons, GraphML export."""

from __future__ import annotations

import networkx as nx
from memloc.locate.graph import fact_neuron_graph, fact_sharing_stats, write_graphml

FACTS = [
    {"case_id": "a", "relation": "capital", "neurons": [[3, 7, 0.9], [5, 1, 0.4]]},
    {"case_id": "b", "relation": "capital", "neurons": [[3, 7, 0.8], [4, 2, 0.5]]},
    {"case_id": "c", "relation": "capital", "neurons": [[3, 7, 0.7]]},
    {"case_id": "d", "relation": "language", "neurons": [[5, 1, 0.3], [6, 6, 0.9]]},
    {"case_id": "e", "relation": "language", "neurons": [[0, 0, 0.2]]},
]


def test_sharing_and_relation_neurons():
    graph = fact_neuron_graph(FACTS)
    stats = fact_sharing_stats(graph)
    assert stats["facts"] == 5 and stats["neurons"] == 5
    assert stats["shared_neurons"] == 2  # 3:7 (a, b, c) and 5:1 (a, d)
    # Neuron 3:7 is in every capital fact; no neuron is in both language facts.
    assert stats["relation_neurons"] == {"capital": [[3, 7, 3]], "language": []}
    shared = {tuple(p["facts"]): p["shared"] for p in stats["pairs_sharing"]}
    assert shared == {("a", "b"): 1, ("a", "c"): 1, ("b", "c"): 1, ("a", "d"): 1}
    assert stats["same_relation_share_any"] == 3 / 4  # a-b, a-c, b-c share; d-e do not
    assert stats["cross_relation_share_any"] == 1 / 6
    assert stats["largest_component"] == {"nodes": 8, "facts": 4, "neurons": 4}


def test_relation_share_threshold():
    stats = fact_sharing_stats(fact_neuron_graph(FACTS), relation_share=0.5)
    assert stats["relation_neurons"]["capital"] == [[3, 7, 3]]


def test_graphml_round_trip(tmp_path):
    path = write_graphml(fact_neuron_graph(FACTS), tmp_path / "facts.graphml")
    back = nx.read_graphml(path)
    assert back.number_of_edges() == 8
    assert back.nodes["fact:d"]["relation"] == "language"
    assert back.edges["fact:a", "neuron:3:7"]["score"] == 0.9
