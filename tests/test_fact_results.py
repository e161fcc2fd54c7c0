"""The fact runners' typed results: stored JSON reads back into the same type, field for field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from memloc.core.lm.facts import load_facts
from memloc.core.lm.loading import load_language_model
from memloc.core.report import Report
from memloc.locate.lm.fact_results import KNRun, TraceRun, config_from_dict
from memloc.locate.lm.fact_runs import locate_intervention, locate_knowledge_neurons, locate_trace
from memloc.locate.lm.interventions import InterventionConfig, InterventionResult
from memloc.locate.lm.knowledge_neurons import KNConfig
from memloc.locate.lm.tracing import TraceConfig

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FACTS = FIXTURES / "fixture-facts.json"


@pytest.fixture(scope="module")
def lm():
    return load_language_model(str(FIXTURES / "fixture-lm"), device="cpu")


@pytest.fixture(scope="module")
def facts():
    return load_facts(FACTS, limit=3)


def _json(data: dict) -> dict:
    return json.loads(json.dumps(data, allow_nan=False))


def _stored(out: Path, method: str) -> Report:
    return Report.load(out / f"{method}_report.json")


def test_trace_run_round_trip(lm, facts, tmp_path):
    config = TraceConfig(samples=2, window=2, kinds=("mlp", "attn"), seed=3, tokens=(0, -1))
    run = locate_trace(lm, facts, FACTS, config, tmp_path)
    assert isinstance(run, TraceRun) and len(run.traces) == 3
    assert TraceRun.from_dict(_json(run.to_dict())) == run
    stored = _stored(tmp_path, "trace")
    assert TraceRun.from_dict(stored.results) == run
    assert stored.metrics == _json(run.metrics.to_dict())
    assert config_from_dict(TraceConfig, stored.config) == config
    # Equality sees the grids: a changed cell makes the runs differ.
    changed = TraceRun.from_dict(stored.results)
    changed.traces[0].grids["mlp"][0, 0] += 1.0
    assert changed != run


def test_kn_run_round_trip(lm, facts, tmp_path):
    config = KNConfig(steps=4, layers=(0, 2), relation_share=0.5)
    run = locate_knowledge_neurons(lm, facts, FACTS, config, tmp_path)
    assert isinstance(run, KNRun) and run.layers == lm.n_layers
    assert KNRun.from_dict(_json(run.to_dict())) == run
    stored = _stored(tmp_path, "neurons")
    assert KNRun.from_dict(stored.results) == run
    assert list(stored.results) == ["facts", "relations", "sharing", "layers"]
    assert stored.metrics == _json(run.metrics.to_dict())
    assert config_from_dict(KNConfig, stored.config) == config
    assert run.metrics.facts == 3
    assert sum(run.metrics.neurons_per_layer.values()) == sum(len(f.neurons) for f in run.facts)


def test_intervention_round_trip(lm, facts, tmp_path):
    config = InterventionConfig(mode="enhance", factor=3.0, controls=1, seed=2)
    run = locate_intervention(lm, facts, FACTS, KNConfig(steps=4), config, tmp_path)
    assert isinstance(run, InterventionResult)
    assert InterventionResult.from_dict(_json(run.to_dict())) == run
    stored = _stored(tmp_path, "enhance")
    assert InterventionResult.from_dict(stored.results) == run
    assert stored.metrics == _json(run.summary().to_dict())
    assert config_from_dict(InterventionConfig, stored.config) == config
    assert run.summary().facts + run.summary().facts_without_neurons == 3


def test_nothing_is_written_without_a_folder(lm, facts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    locate_trace(lm, facts[:1], FACTS, TraceConfig(samples=1, window=2, kinds=("mlp",)))
    assert list(tmp_path.iterdir()) == []
