"""``--layers auto``: the edit probe chooses the layer where fixture edits work, caches, and reports."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from memloc.core.errors import ConfigError
from memloc.core.lm.facts import load_facts
from memloc.core.lm.loading import load_language_model
from memloc.edit import layer_probe
from memloc.edit.delta import weights_hash
from memloc.edit.editors import EditPlan, auto_layer, edit_probe, prepare_editor
from memloc.edit.evaluate import EvalConfig, EvalResult
from memloc.edit.probe_result import LayerScore, ProbeConfig, choose
from memloc.edit.session import evaluate_plan
from memloc.edit.stats import StatsConfig
from memloc.edit.templates import TemplateConfig
from memloc.locate.lm.tracing import TraceConfig

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures"
QUIET = EvalConfig(fluency=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("cache")
        mp.setenv("MEMLOC_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def lm(cache):
    if not (FIXTURE / "fixture-lm").exists():
        pytest.skip("fixtures/fixture-lm is not built")
    return load_language_model(str(FIXTURE / "fixture-lm"), device="cpu")


@pytest.fixture(scope="module")
def facts():
    return load_facts(FIXTURE / "fixture-facts.json")


@pytest.fixture(scope="module")
def plan():
    # The fixture LM only saw facts at the start of a sequence: edit with the bare prompt
    # (as tests/test_rome.py does), over statistics of a few generated texts.
    return EditPlan(
        "rome",
        stats=StatsConfig(samples=32),
        templates=TemplateConfig(counts=()),
        probe=ProbeConfig(facts=4, steps=20, ns_floor=0.5),
    )


@pytest.fixture(scope="module")
def profession(facts):
    """Facts of the one fixture relation whose edits work somewhere (ES 1 at layer 0, 0 at layers 2-3)."""
    return [f for f in facts if f.relation_key == "profession"]


@pytest.fixture(scope="module")
def probed(lm, facts, plan, profession):
    edited = profession[:3]
    before = weights_hash(lm.model)
    calls = []
    _, choice = prepare_editor(lm, edited, plan, pool=facts, progress=lambda *call: calls.append(call))
    assert weights_hash(lm.model) == before  # every probe edit was restored
    probing = [(done, total) for done, total, what in calls if "edit probe at layer" in what]
    assert probing[-1] == (lm.n_layers, lm.n_layers) and len(probing) > lm.n_layers  # steps inside too
    return edited, choice


def test_the_probe_picks_the_layer_where_fixture_edits_work(lm, plan, probed):
    edited, choice = probed
    probe = choice.probe
    assert probe is not None and choice.auto_layers
    assert choice.layers == probe.layers == (probe.layer,)
    assert [s.layer for s in probe.scores] == list(range(lm.n_layers))
    (relation,) = probe.relations
    assert relation.edited_overlap == 0 and not {f.case_id for f in edited} & set(relation.facts)
    by_layer = {s.layer: s for s in probe.scores}
    assert by_layer[probe.layer].es == max(s.es for s in probe.scores) >= 0.75
    worst = min(probe.scores, key=lambda s: (s.reach, s.margin))
    assert worst.reach < by_layer[probe.layer].reach
    # The probe's facts are held out; the edited facts themselves do better at its choice.
    at = {
        layer: evaluate_plan(lm, edited, replace(plan, layers=(layer,)), "single", QUIET).post
        for layer in (probe.layer, worst.layer)
    }
    assert at[probe.layer]["ES"] > at[worst.layer]["ES"]
    assert at[probe.layer]["EM"] > at[worst.layer]["EM"]


def test_a_second_run_reads_the_probe_from_the_cache(lm, facts, plan, probed, cache, monkeypatch):
    edited, choice = probed
    assert len(list(cache.glob("stats/*/layer-probe/rome-*.json"))) == 1

    def no_edits(*args, **kwargs):
        raise AssertionError("the cached probe ran again")

    monkeypatch.setattr(layer_probe, "probe_relation", no_edits)
    _, again = prepare_editor(lm, edited, plan, pool=facts)
    assert again.probe is not None and again.probe.cached
    assert again.probe.scores == choice.probe.scores and again.layers == choice.layers
    # Another setting is another key: the probe runs again.
    calls = []
    monkeypatch.setattr(layer_probe, "probe_relation", lambda *a, **k: calls.append(1) or choice.probe.scores)
    edit_probe(lm, edited, replace(plan, probe=replace(plan.probe, steps=5)), pool=facts)
    assert calls == [1]
    # The NS floor only chooses among the cached scores: no new probe, and the same choice here.
    floor = edit_probe(lm, edited, replace(plan, probe=replace(plan.probe, ns_floor=0.0)), pool=facts)
    assert calls == [1] and floor.cached and "NS >= 0.0" in floor.rule


def test_the_choice_follows_the_scores_not_the_layer_order(lm, profession, plan):
    # Candidates 1-3 whose editors are rigged: only candidate 2 gets the (working) layer-0 edit,
    # so the probe must find it by editing, and skip the earlier candidate 1.
    facts = profession[3:5]
    real = {layers: prepare_editor(lm, facts, replace(plan, layers=layers))[0] for layers in ((0,), (3,))}
    spans = [(c, (c,)) for c in (1, 2, 3)]
    probe = layer_probe.probe_layers(
        lm, facts, [], spans, lambda layers, _: real[(0,) if layers == (2,) else (3,)],
        plan.probe, "rome", {"rigged": True},
    )  # fmt: skip
    assert probe.layer == 2 and probe.relations[0].edited_overlap == 2


def test_the_rule_floor_ties_and_earlier_layers():
    def score(layer, es, ps, ns, margin=0.0):
        return LayerScore(layer, (layer,), es, ps, ns, margin)

    rows = [
        score(0, 0.5, 0.5, 0.9),
        score(1, 1.0, 1.0, 0.4),
        score(2, 1.0, 0.5, 0.8),
        score(3, 1.0, 0.5, 0.8),
    ]
    assert choose(rows, 0.7) == (rows[2], True)  # layer 1 reaches further but breaks NS; 2 and 3 tie
    assert choose(rows, 0.95) == (rows[1], False)  # none keeps NS: ES + PS alone
    rows[3] = score(3, 1.0, 0.5, 0.8, margin=0.3)
    assert choose(rows, 0.7)[0].layer == 3  # a tie goes to the larger margin first
    assert choose([score(4, 1.0, None, None)], 0.7)[0].layer == 4  # no paraphrases or neighbours


def test_a_tiny_file_probes_with_the_edited_facts(profession):
    held, overlap = layer_probe.probe_facts(profession[:1], profession[:1], "profession", 3)
    assert [f.case_id for f in held] == [profession[0].case_id] and overlap == 1
    held, overlap = layer_probe.probe_facts(profession, profession[:2], "profession", 3)
    assert [f.case_id for f in held] == [f.case_id for f in profession[2:5]] and overlap == 0


def test_memit_probes_spans_ending_at_each_candidate(lm, facts, profession, plan):
    memit = replace(
        plan, method="memit", memit_span=2, probe=ProbeConfig(facts=2, candidates=(1, 3), steps=5)
    )
    _, choice = prepare_editor(lm, profession[:2], memit, pool=facts)
    assert [s.layers for s in choice.probe.scores] == [(0, 1), (2, 3)]
    assert choice.layers in ((0, 1), (2, 3)) and choice.layers[-1] == choice.probe.layer


def test_trace_keeps_the_causal_tracing_peak(lm, profession, plan):
    traced = replace(
        plan, layer_rule="trace", auto_facts=2, auto_trace=TraceConfig(samples=2, kinds=("mlp",))
    )
    _, choice = prepare_editor(lm, profession[:2], traced)
    assert choice.probe is None and choice.auto_layers
    assert choice.layers == (auto_layer(lm, profession[:2], traced),)


def test_the_eval_record_keeps_the_probe(probed):
    _, choice = probed
    result = EvalResult(
        "single", 1, {}, {}, 0.0, (), method="rome", layers=choice.layers, layer_probe=choice.probe
    )
    stored = json.loads(json.dumps(result.to_dict()))
    assert stored["layer_probe"]["layer"] == choice.probe.layer
    assert EvalResult.from_dict(stored).layer_probe == choice.probe


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: ProbeConfig(facts=0), "facts"),
        (lambda: ProbeConfig(steps=0), "steps"),
        (lambda: ProbeConfig(ns_floor=math.nan), "ns_floor"),
        (lambda: ProbeConfig(ns_floor=1.5), "ns_floor"),
        (lambda: ProbeConfig(candidates=(-1,)), "candidates"),
        (lambda: ProbeConfig(candidates=(2, 2)), "candidates"),
        (lambda: EditPlan("rome", layer_rule="peak"), "layer_rule"),
    ],
)
def test_probe_settings_are_validated(make, field):
    with pytest.raises(ConfigError, match=field):
        make()


def test_cli_prints_the_probe_and_stores_it(lm, cache, tmp_path, capsys, monkeypatch):
    import memloc.cli.edit_commands as commands
    from test_cli import assert_one_line_error, run_cli

    monkeypatch.setattr(commands, "LONG_PROBE_ON_CPU", 1)  # the fixture LM's probe is quick; say it anyway

    args = ("--model", FIXTURE / "fixture-lm", "--device", "cpu", "--facts", FIXTURE / "fixture-facts.json")
    common = ("--method", "rome", "--limit", "1", "--samples", "8", "--fluency-tokens", "2")
    probe = ("--layers", "auto", "--probe-layers", "0-1", "--probe-facts", "1")
    code, out, err = run_cli(capsys, "edit", "eval", *args, *common, *probe, "--out", tmp_path / "ev")
    assert code in (0, None), err
    assert "edit probe: rome at layers" in out and "probe of relation capital: facts 6 (1 held out" in err
    assert "--layers auto makes 2 probe edits (2 candidate layers, 1 relations)" in " ".join(err.split())
    stored = json.loads((tmp_path / "ev" / "eval_report.json").read_text())
    assert [s["layer"] for s in stored["results"]["layer_probe"]["scores"]] == [0, 1]
    code, _, err = run_cli(capsys, "edit", "eval", *args, *common, "--layers", "2", "--probe-layers", "0")
    assert_one_line_error(code, err, "--probe-layers belongs to --layers auto")
    code, _, err = run_cli(capsys, "edit", "eval", *args, *common, "--probe-layers", "9")
    assert_one_line_error(code, err, "9")
    code, _, err = run_cli(capsys, "edit", "apply", *args, *common[:-2], "--layers", "1", "--probe-steps", "20",
                           "--out", tmp_path / "fixed")  # fmt: skip
    assert_one_line_error(code, err, "--probe-steps belongs to --layers auto")
    assert not (tmp_path / "fixed").exists()


def test_probe_steps_reach_the_edit_plan():
    from memloc.cli.edit_commands import Method, _plan

    assert _plan(Method.rome, ["auto"], "generated", 8, 0, probe_steps=20).probe.steps == 20
    assert _plan(Method.rome, None, "generated", 8, 0).probe.steps == ProbeConfig().steps


def test_default_candidates_spread_over_the_lower_half_and_keep_tiny_models_whole():
    from memloc.edit.probe_result import ProbeConfig, default_candidates

    assert default_candidates(3) == (0, 1, 2) and default_candidates(8) == tuple(range(8))
    deep = default_candidates(30)
    assert len(deep) == 8 and deep[0] == 3 and deep[-1] == 15 and list(deep) == sorted(set(deep))
    assert 5 in default_candidates(28)  # GPT-J's ROME layer (Meng et al. 2022)
    assert ProbeConfig(candidates=(4,)).layers_for(30) == (4,)
    assert ProbeConfig(max_default=2).layers_for(30) == (3, 15)


def test_a_deeper_model_never_gets_fewer_default_candidates():
    """9 layers used to probe 4 (the band 10%-50% holds only layers 1-4) where 8 layers probed all 8."""
    from memloc.edit.probe_result import default_candidates

    for n in range(1, 61):
        picks = default_candidates(n)
        assert len(picks) == min(n, 8), n
        assert list(picks) == sorted(set(picks)) and picks[0] >= 0 and picks[-1] < n
