"""Fact files: the committed SmolLM2 files load, and bad records get one clear line each.

No model is loaded here; fixtures/make_smollm2_facts.py checked the facts against
SmolLM2-135M when it wrote the files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from memloc.core.errors import DataError
from memloc.core.lm.facts import Fact, load_facts, require_edit_targets

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SIMPLE = FIXTURES / "smollm2-facts.jsonl"
COUNTERFACT = FIXTURES / "smollm2-counterfact.json"


def _counterfact_record(case_id: int = 0, **rewrite_overrides) -> dict:
    rewrite = {
        "prompt": "{} is located in the city of",
        "subject": "The Louvre",
        "target_true": {"str": "Paris"},
        "target_new": {"str": "Rome"},
        "relation_id": "P131",
        **rewrite_overrides,
    }
    return {
        "case_id": case_id,
        "requested_rewrite": rewrite,
        "paraphrase_prompts": ["The Louvre can be found in the city of", "Visitors see The Louvre in"],
        "neighborhood_prompts": ["The Eiffel Tower is located in the city of"] * 5,
        "generation_prompts": ["The Louvre is"],
    }


def _write_json(tmp_path: Path, records) -> Path:
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def _write_jsonl(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "facts.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# --- the committed SmolLM2 files -------------------------------------------------------


def test_simple_smollm2_file_loads_with_enough_facts_over_several_relations():
    facts = load_facts(SIMPLE)
    assert len(facts) >= 20
    assert len({f.relation for f in facts}) >= 3
    for fact in facts:
        assert fact.prompt.count("{}") == 1
        assert fact.subject in fact.text
        assert fact.target_true and fact.target_new and fact.target_new != fact.target_true
        assert len(fact.paraphrases) == 2
        assert all(fact.subject in p for p in fact.paraphrases)
    require_edit_targets(facts)


def test_counterfact_smollm2_file_loads_with_full_records():
    facts = load_facts(COUNTERFACT)
    assert len(facts) >= 50
    assert len({f.case_id for f in facts}) == len(facts)
    for fact in facts:
        assert len(fact.paraphrases) == 2, fact.case_id
        assert len(fact.neighborhood) == 5, fact.case_id
        assert fact.generation_prompts, fact.case_id
        assert fact.target_new != fact.target_true, fact.case_id
        # Neighborhood prompts are about other subjects (one, "PlayStation Portable",
        # contains its fact's subject "PlayStation", so compare whole prompts).
        assert fact.text not in fact.neighborhood, fact.case_id
        assert len(set(fact.neighborhood)) == 5, fact.case_id
    require_edit_targets(facts)


def test_simple_file_facts_are_counterfact_cases_with_the_same_content():
    """The two files share case ids, so results on one can be joined with the other."""
    by_id = {f.case_id: f for f in load_facts(COUNTERFACT)}
    for fact in load_facts(SIMPLE):
        twin = by_id[fact.case_id]
        assert (fact.text, fact.target_true, fact.target_new, fact.relation) == (
            twin.text,
            twin.target_true,
            twin.target_new,
            twin.relation,
        )


# --- parsing ----------------------------------------------------------------------------


def test_counterfact_record_parses_into_a_fact(tmp_path):
    [fact] = load_facts(_write_json(tmp_path, [_counterfact_record(7)]))
    assert fact.case_id == "7"
    assert fact.text == "The Louvre is located in the city of"
    assert (fact.target_true, fact.target_new, fact.relation) == ("Paris", "Rome", "P131")
    assert fact.prompts()[1:] == list(fact.paraphrases)
    assert len(fact.neighborhood) == 5


def test_simple_form_accepts_the_subject_verbatim_instead_of_a_placeholder(tmp_path):
    line = json.dumps(
        {"prompt": "The Louvre is located in the city of", "subject": "Louvre", "target": "Paris"}
    )
    [fact] = load_facts(_write_jsonl(tmp_path, [line]))
    assert fact.prompt == "The {} is located in the city of"
    assert fact.text == "The Louvre is located in the city of"
    assert fact.target_true == "Paris"
    assert fact.case_id == "0"


def test_blank_lines_in_jsonl_are_skipped(tmp_path):
    lines = [json.dumps({"prompt": "{} is in", "subject": "Rome", "target": "Italy"}), "", "   "]
    assert len(load_facts(_write_jsonl(tmp_path, lines))) == 1


# --- validation: one line naming the record and the field ------------------------------


def test_subject_not_in_prompt_names_record_and_field(tmp_path):
    line = json.dumps(
        {"case_id": "c9", "prompt": "The Louvre is in", "subject": "Colosseum", "target": "Rome"}
    )
    with pytest.raises(DataError) as exc:
        load_facts(_write_jsonl(tmp_path, [line]))
    message = _one_line(exc)
    assert "case_id c9" in message and "'prompt'" in message and "Colosseum" in message


def test_counterfact_subject_not_in_prompt_names_the_rewrite_field(tmp_path):
    record = _counterfact_record(3, prompt="The museum is located in the city of")
    with pytest.raises(DataError) as exc:
        load_facts(_write_json(tmp_path, [record]))
    message = _one_line(exc)
    assert "case_id 3" in message and "requested_rewrite.prompt" in message


def test_empty_target_names_record_and_field(tmp_path):
    good = json.dumps({"prompt": "{} is in", "subject": "Rome", "target": "Italy"})
    empty = json.dumps({"prompt": "{} is in", "subject": "Lyon", "target": "  "})
    with pytest.raises(DataError) as exc:
        load_facts(_write_jsonl(tmp_path, [good, empty]))
    message = _one_line(exc)
    assert "record 1" in message and "'target'" in message and "empty" in message


def test_empty_counterfact_target_true_names_the_nested_field(tmp_path):
    record = _counterfact_record(4, target_true={"str": ""})
    with pytest.raises(DataError) as exc:
        load_facts(_write_json(tmp_path, [record]))
    message = _one_line(exc)
    assert "case_id 4" in message and "requested_rewrite.target_true.str" in message


def test_bad_json_line_names_the_line(tmp_path):
    good = json.dumps({"prompt": "{} is in", "subject": "Rome", "target": "Italy"})
    with pytest.raises(DataError) as exc:
        load_facts(_write_jsonl(tmp_path, [good, '{"prompt": "{} is in", "subject": ']))
    message = _one_line(exc)
    assert "line 2" in message and "not valid JSON" in message


def test_missing_requested_rewrite_in_a_counterfact_file_names_that_field(tmp_path):
    broken = _counterfact_record(1)
    del broken["requested_rewrite"]
    with pytest.raises(DataError) as exc:
        load_facts(_write_json(tmp_path, [_counterfact_record(0), broken]))
    message = _one_line(exc)
    assert "record 1" in message and "requested_rewrite" in message


def test_lone_counterfact_record_without_requested_rewrite_names_that_field(tmp_path):
    broken = _counterfact_record(5)
    del broken["requested_rewrite"]
    with pytest.raises(DataError) as exc:
        load_facts(_write_json(tmp_path, broken))
    message = _one_line(exc)
    assert "case_id 5" in message and "requested_rewrite" in message


def test_duplicate_case_id_is_refused(tmp_path):
    records = [_counterfact_record(2), _counterfact_record(8), _counterfact_record(2)]
    with pytest.raises(DataError) as exc:
        load_facts(_write_json(tmp_path, records))
    message = _one_line(exc)
    assert "case_id 2" in message and "more than once" in message


def test_target_new_equal_to_target_true_is_refused_for_edits(tmp_path):
    facts = load_facts(
        _write_json(tmp_path, [_counterfact_record(0), _counterfact_record(6, target_new={"str": "Paris"})])
    )
    with pytest.raises(DataError) as exc:
        require_edit_targets(facts)
    message = _one_line(exc)
    assert "fact 6" in message and "target_new" in message and "target_true" in message


def test_missing_target_new_is_refused_for_edits():
    fact = Fact(case_id="x", prompt="{} is in", subject="Rome", target_true="Italy")
    with pytest.raises(DataError) as exc:
        require_edit_targets([fact])
    assert "fact x" in _one_line(exc) and "target_new" in str(exc.value)
