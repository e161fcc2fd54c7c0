"""Neighbourhoods with their own answers (zsRE locality): read, scored against each own answer, reported."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from memloc.core.errors import DataError
from memloc.core.lm.facts import load_facts, neighborhood_rule
from memloc.core.lm.loading import load_language_model
from memloc.edit.delta import WeightDelta
from memloc.edit.evaluate import EvalConfig, EvalResult, evaluate_edits, score_facts, summarize

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def fixture():
    return load_language_model(str(FIXTURES / "fixture-lm"), device="cpu"), load_facts(
        FIXTURES / "fixture-facts.json"
    )


def _own_answers(facts):
    """The first fact, with neighbours that are other relations' facts and carry those facts' answers."""
    head = facts[0]
    others = [f for f in facts if f.relation != head.relation and f.target_true != head.target_new][:5]
    return replace(
        head,
        neighborhood=tuple(f.text for f in others),
        neighborhood_targets=tuple(f.target_true for f in others),
    )


def test_records_with_neighborhood_targets_are_read_and_checked(tmp_path):
    record = json.loads((FIXTURES / "fixture-facts.json").read_text())[0]
    n = len(record["neighborhood_prompts"])
    record["neighborhood_targets"] = [{"str": "Velmora"}] + ["Tarnish"] * (n - 1)
    path = tmp_path / "facts.json"
    path.write_text(json.dumps([record]))
    (fact,) = load_facts(path)
    assert fact.neighborhood_targets == ("Velmora", *["Tarnish"] * (n - 1))
    assert fact.neighbor_target(0) == "Velmora" and neighborhood_rule([fact]) == "own answers"
    record["neighborhood_targets"] = ["Velmora"]
    path.write_text(json.dumps([record]))
    with pytest.raises(DataError, match=f"1 neighborhood_targets for {n} neighborhood prompts"):
        load_facts(path)


def test_ns_compares_each_neighbours_own_answer_with_the_new_target(fixture):
    lm, facts = fixture
    own = _own_answers(facts)
    shared = replace(own, neighborhood_targets=())  # the same prompts under CounterFact's rule
    config = EvalConfig(fluency=False)
    with_own, with_shared = (summarize(score_facts(lm, [f], config)) for f in (own, shared))
    # The fixture knows every fact: each neighbour's own answer beats the new target...
    assert with_own["NS"] == 1.0 and with_own["NA"] == 1.0
    # ...while the head fact's true object is the wrong answer to other relations' prompts.
    assert with_shared["NA"] == 0.0 and with_shared["NM"] < with_own["NM"]
    assert neighborhood_rule([shared]) == "counterfact" and neighborhood_rule([own, shared]) == "mixed"


def test_the_rule_is_recorded_in_the_evaluation(fixture):
    lm, facts = fixture
    own = _own_answers(facts)

    def unchanged(fs):
        return WeightDelta("none", (), tuple(f.case_id for f in fs), unedited="the test changes nothing")

    result = evaluate_edits(lm, [own], unchanged, "single", EvalConfig(fluency=False))
    assert result.neighborhood_rule == "own answers"
    assert EvalResult.from_dict(json.loads(json.dumps(result.to_dict()))).neighborhood_rule == "own answers"
