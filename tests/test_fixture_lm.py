"""The committed fixture LM (fixtures/make_fixture_lm.py) loads offline and knows its facts."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MODEL_DIR = FIXTURES / "fixture-lm"
FACTS = FIXTURES / "fixture-facts.json"


@pytest.fixture(scope="module")
def lm():
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)
    return model.eval(), tok


@pytest.fixture(scope="module")
def facts() -> list[dict]:
    return json.loads(FACTS.read_text())


def first_token(tok, target: str) -> list[int]:
    # CounterFact stores targets without the leading space; evaluation scores " " + target.
    return tok(" " + target, add_special_tokens=False)["input_ids"]


def test_targets_are_single_known_tokens(lm, facts):
    _, tok = lm
    for fact in facts:
        rw = fact["requested_rewrite"]
        assert rw["target_new"]["str"] != rw["target_true"]["str"], fact["case_id"]
        for key in ("target_true", "target_new"):
            ids = first_token(tok, rw[key]["str"])
            assert len(ids) == 1, (fact["case_id"], key, ids)
            assert ids[0] != tok.unk_token_id, (fact["case_id"], key)
            assert tok.decode(ids) == rw[key]["str"]


def test_prompts_decode_back_to_their_text(lm, facts):
    _, tok = lm
    rw = facts[0]["requested_rewrite"]
    text = rw["prompt"].format(rw["subject"]) + " " + rw["target_true"]["str"]
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


@torch.no_grad()
def test_model_answers_rewrite_prompts(lm, facts):
    model, tok = lm
    # Prompts of equal token length go through together: a handful of forward passes instead
    # of one per fact, and no padding whose handling could itself be wrong.
    by_length: dict[int, list[tuple[list[int], int]]] = defaultdict(list)
    for fact in facts:
        rw = fact["requested_rewrite"]
        ids = tok(rw["prompt"].format(rw["subject"]), add_special_tokens=False)["input_ids"]
        by_length[len(ids)].append((ids, first_token(tok, rw["target_true"]["str"])[0]))
    hits = 0
    # A model this small gains nothing from threads, and on a busy shared CPU the thread pool's
    # spin-waiting made each forward pass ~100x slower than on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for group in by_length.values():
            ids = torch.tensor([g[0] for g in group])
            want = torch.tensor([g[1] for g in group])
            hits += (model(input_ids=ids).logits[:, -1].argmax(-1) == want).sum().item()
    finally:
        torch.set_num_threads(threads)
    assert hits / len(facts) >= 0.95, f"{hits}/{len(facts)} rewrite prompts answered"
