"""The edit session API, the demo's language-model half, and the CLI's light imports."""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from memloc.core.lm.facts import load_facts
from memloc.core.lm.loading import load_language_model
from memloc.edit.delta import LayerDelta, WeightDelta, weights_hash
from memloc.edit.editors import combine
from memloc.edit.monitor import MonitorConfig

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def fixture_lm():
    if not (FIXTURE / "fixture-lm").exists():
        pytest.skip("fixtures/fixture-lm is not built")
    torch.set_num_threads(1)
    return load_language_model(str(FIXTURE / "fixture-lm"), device="cpu")


def test_combined_deltas_say_which_facts_were_not_edited():
    edited = WeightDelta("kn", (LayerDelta(0, torch.ones(4, 1), torch.ones(8, 1)),), ("a",), info={"n": 1})
    skipped = WeightDelta("kn", (), ("b",), unedited="no neurons")
    both = combine([edited, skipped], "kn")
    assert both.unedited_cases() == ["b"] and edited.unedited_cases() == []
    assert both.info_record() == {"parts": [{"n": 1}, {"unedited": "no neurons"}]}


def test_edit_and_undo_edits_the_fact_and_restores_the_weights(fixture_lm):
    from memloc.edit.demo_edit import edit_and_undo

    fact = load_facts(FIXTURE / "fixture-facts.json", limit=1)[0]
    base = weights_hash(fixture_lm.model)
    # The fixture LM is too small for ROME's update to stay under the demo's size limit.
    monitor = MonitorConfig(max_update_ratio=None, tokens=8)
    shown = edit_and_undo(fixture_lm, fact, stats_samples=16, tokens=4, monitor=monitor)
    assert shown.after.p_new > shown.before.p_new
    assert shown.undone_bit_exact and weights_hash(fixture_lm.model) == base
    assert 0 <= shown.layer < fixture_lm.n_layers and set(shown.update_ratio) == {shown.layer}
    assert list(shown.before.generations) == list(shown.after.generations) and shown.before.generations


def test_the_demo_facts_ship_with_the_package():
    from memloc.edit.demo_edit import demo_fact

    shipped = (
        Path(importlib.import_module("memloc.edit").__file__).parent / "data" / "smollm2-counterfact.json"
    )
    assert json.loads(shipped.read_text()) == json.loads((FIXTURE / "smollm2-counterfact.json").read_text())
    assert demo_fact() == load_facts(FIXTURE / "smollm2-counterfact.json", limit=1)[0]


def test_cli_defaults_are_the_config_classes_defaults():
    from memloc.cli import app  # noqa: F401 (declares every command, reading their defaults)
    from memloc.cli.defaults import READ

    assert len(READ) >= 15
    for config, name in READ:
        module, _, cls = config.partition(":")
        fields = {f.name: f for f in dataclasses.fields(getattr(importlib.import_module(module), cls))}
        from memloc.cli.defaults import config_default

        assert config_default(config, name) == fields[name].default, (config, name)


def test_cli_choices_match_the_library():
    from memloc.cli.edit_commands import Method, Mode
    from memloc.cli.facts import TraceKind
    from memloc.edit.editors import METHODS
    from memloc.edit.evaluate import MODES
    from memloc.locate.lm.tracing import TRACE_KINDS

    assert tuple(m.value for m in Mode) == MODES and tuple(m.value for m in Method) == METHODS
    assert tuple(k.value for k in TraceKind) == TRACE_KINDS


def test_the_cli_declares_its_commands_without_torch():
    code = (
        "import sys, memloc.cli.app; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"
