"""The 1,000-fact SmolLM2 CounterFact file: it loads through memloc's reader with full records.

No model is loaded here; fixtures/make_smollm2_facts_1000.py screened every rewrite and
neighborhood prompt against SmolLM2-135M when it wrote the file.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from memloc.core.lm.facts import Fact, load_facts, require_edit_targets

FILE = Path(__file__).resolve().parent.parent / "fixtures" / "smollm2-counterfact-1000.json"


@pytest.fixture(scope="module")
def facts() -> list[Fact]:
    return load_facts(FILE)


def test_file_holds_at_least_1000_facts_with_unique_case_ids(facts):
    assert len(facts) >= 1000
    assert len({f.case_id for f in facts}) == len(facts)
    raw = json.loads(FILE.read_text(encoding="utf-8"))
    assert [r["case_id"] for r in raw] == list(range(len(raw)))


def test_every_record_has_two_paraphrases_five_neighbors_and_a_new_target(facts):
    for fact in facts:
        assert len(fact.paraphrases) == 2, fact.case_id
        assert len(fact.neighborhood) == 5, fact.case_id
        assert len(set(fact.neighborhood)) == 5, fact.case_id
        assert fact.generation_prompts, fact.case_id
        assert fact.target_new and fact.target_new != fact.target_true, fact.case_id
    require_edit_targets(facts)


def test_subject_fills_the_placeholder_of_the_rewrite_prompt_and_the_paraphrases(facts):
    for fact in facts:
        assert fact.prompt.count("{}") == 1, fact.case_id
        assert fact.text == fact.prompt.replace("{}", fact.subject)
        assert fact.subject in fact.text
        assert all(fact.subject in p for p in fact.paraphrases), fact.case_id
        assert fact.text not in fact.neighborhood, fact.case_id


def test_several_relations_each_with_several_objects_and_any_prefix_covers_them(facts):
    relations = Counter(f.relation for f in facts)
    assert len(relations) >= 3
    objects: dict[str, set[str]] = defaultdict(set)
    for fact in facts:
        objects[fact.relation].add(fact.target_true)
    assert all(len(o) >= 2 for o in objects.values()), objects
    # Records are interleaved by relation, so a small prefix already holds every one.
    assert {f.relation for f in facts[: 2 * len(relations)]} == set(relations)


def test_neighbors_are_facts_of_the_file_with_the_same_relation_and_true_object(facts):
    """CounterFact's neighborhood: other subjects, same relation, same true object."""
    by_text = {f.text: f for f in facts}
    for fact in facts:
        for prompt in fact.neighborhood:
            other = by_text[prompt]
            assert other.subject != fact.subject, fact.case_id
            assert (other.relation, other.target_true) == (fact.relation, fact.target_true), fact.case_id


def test_new_targets_are_objects_of_the_same_relation(facts):
    objects: dict[str, set[str]] = defaultdict(set)
    for fact in facts:
        objects[fact.relation].add(fact.target_true)
    for fact in facts:
        assert fact.target_new in objects[fact.relation], fact.case_id
