"""Edited models go to new folders with a ledger; undo is bit-exact; the monitor refuses collapse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from memloc.core.lm.facts import Fact
from memloc.core.lm.loading import load_language_model
from memloc.edit.delta import LayerDelta, WeightDelta, apply, weights_hash
from memloc.edit.ledger import LedgerError, save_edited, undo
from memloc.edit.monitor import CollapseError, MonitorConfig, checked_apply
from tiny_lms import tiny_lm

FIXTURE_LM = Path(__file__).resolve().parents[1] / "fixtures" / "fixture-lm"
FACT = Fact("7", "the capital of {} is", "Zorbia", "Paris", "Rome")


def _delta(lm, scale=1.0, layer=1):
    gen = torch.Generator().manual_seed(layer)
    left = torch.randn(lm.adapter.d_model, 1, generator=gen) * scale
    right = torch.randn(lm.adapter.d_mlp, 1, generator=gen)
    return WeightDelta("test", (LayerDelta(layer, left, right),), ("7",), {"scale": scale})


@pytest.fixture()
def base_folder(tmp_path):
    lm = tiny_lm("gpt2", seed=1)
    lm.model.save_pretrained(tmp_path / "base")
    lm.tokenizer.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def test_save_then_undo_restores_base_bit_for_bit(base_folder, tmp_path):
    lm = load_language_model(str(base_folder), device="cpu")
    base = weights_hash(lm.model)
    deltas = [_delta(lm, layer=1), _delta(lm, layer=1), _delta(lm, layer=2)]
    handles = [apply(lm.model, lm.adapter, d) for d in deltas]
    out = save_edited(lm, tmp_path / "edited", deltas, handles, [FACT], base)
    ledger = json.loads((out / "ledger.json").read_text())
    assert ledger["base_hash"] == base and ledger["edits"][0]["facts"][0]["subject"] == "Zorbia"
    edited = load_language_model(str(out), device="cpu")
    assert weights_hash(edited.model) == ledger["edited_hash"] != base
    undo(edited, out)
    assert weights_hash(edited.model) == base


def test_never_writes_over_the_input_or_a_full_folder(base_folder, tmp_path):
    lm = load_language_model(str(base_folder), device="cpu")
    before = sorted(p.name for p in base_folder.iterdir())
    with pytest.raises(Exception, match="over its input"):
        save_edited(lm, base_folder, [], [], [], weights_hash(lm.model))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    with pytest.raises(Exception, match="not empty"):
        save_edited(lm, tmp_path / "full", [], [], [], weights_hash(lm.model))
    assert sorted(p.name for p in base_folder.iterdir()) == before
    assert (tmp_path / "full" / "x").read_text() == "keep"


def test_undo_refuses_a_ledger_of_another_model(base_folder, tmp_path):
    lm = load_language_model(str(base_folder), device="cpu")
    base = weights_hash(lm.model)
    delta = _delta(lm)
    out = save_edited(lm, tmp_path / "edited", [delta], [apply(lm.model, lm.adapter, delta)], [FACT], base)
    other = tiny_lm("gpt2", seed=2)
    with pytest.raises(LedgerError, match="does not match the model"):
        undo(other, out)
    ledger = json.loads((out / "ledger.json").read_text())
    ledger["base_hash"] = "0" * 64
    (out / "ledger.json").write_text(json.dumps(ledger))
    edited = load_language_model(str(out), device="cpu")
    with pytest.raises(LedgerError, match="base hash"):
        undo(edited, out)


def test_monitor_refuses_a_huge_update_and_rolls_back_collapse():
    # The fixture LM writes varied text; random tiny models already repeat themselves.
    lm = load_language_model(str(FIXTURE_LM), device="cpu")
    config = MonitorConfig(prompts=("the", "a", "in the"), tokens=16)
    base = weights_hash(lm.model)
    with pytest.raises(CollapseError, match="of the weight's norm"):
        checked_apply(lm, _delta(lm, scale=1e4), config)
    assert weights_hash(lm.model) == base
    # Push every position towards one token: generations repeat it, entropy collapses.
    token = lm.tokenizer.convert_tokens_to_ids("Dravost")
    unembed = lm.adapter.unembedding(lm.model)[token]
    collapse = WeightDelta("test", (LayerDelta(3, unembed[:, None] * 20, torch.ones(lm.adapter.d_mlp, 1)),))
    with pytest.raises(CollapseError, match="repetitive"):
        checked_apply(lm, collapse, MonitorConfig(max_update_ratio=1e9, prompts=config.prompts, tokens=16))
    assert weights_hash(lm.model) == base
    handle, info = checked_apply(lm, _delta(lm, scale=1e-4), config)
    assert info.update_ratio[1] < 0.01
    handle.restore()
    assert weights_hash(lm.model) == base
