"""The facts commands end to end on the fixture LM: JSON output, resuming, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_one_line_error, run_cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODEL = FIXTURES / "fixture-lm"
FACTS = FIXTURES / "fixture-facts.json"
COMMON = ("--model", MODEL, "--device", "cpu")


def test_trace_json_and_resume(tmp_path, capsys):
    out = tmp_path / "facts"
    args = ("locate", "trace", *COMMON, "--facts", FACTS, "--limit", "2", "--samples", "3", "--window", "2")
    code, stdout, _ = run_cli(capsys, *args, "--out", out, "--format", "json")
    assert code in (0, None)
    result = json.loads(stdout)
    assert 0 <= result["best_layer"] < 4 and len(result["facts"]) == 2
    assert set(result["facts"][0]["grids"]) == {"hidden", "mlp", "attn"}
    assert (out / "report.html").is_file() and (out / "figures" / "trace_mlp_effect.png").is_file()
    stored = (out / "trace.json").stat().st_mtime_ns
    code, again, _ = run_cli(capsys, *args, "--out", out, "--format", "json")
    assert json.loads(again)["facts"] == result["facts"]
    assert (out / "trace.json").stat().st_mtime_ns == stored  # nothing recomputed


def _facts_file(tmp_path, record: dict) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record) + "\n")
    return path


@pytest.mark.parametrize(
    ("record", "needles"),
    [
        (
            {"prompt": "The capital of Gafou is", "subject": "Paris", "target": "Velmora"},
            ("record 0", "subject", "not in the prompt"),
        ),
        (
            {"prompt": "The capital of {} is", "subject": "Gafou", "target": "  "},
            ("record 0", "target", "empty"),
        ),
    ],
)
def test_bad_facts_are_one_line(tmp_path, capsys, record, needles):
    path = _facts_file(tmp_path, record)
    code, _, err = run_cli(capsys, "locate", "trace", *COMMON, "--facts", path)
    assert_one_line_error(code, err, *needles)


def test_unsupported_model_type_lists_the_supported(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    code, _, err = run_cli(
        capsys, "locate", "trace", "--model", tmp_path, "--facts", FACTS, "--device", "cpu"
    )
    assert_one_line_error(code, err, "bert", "gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2")


def test_knowledge_neurons_json_report_and_graph(tmp_path, capsys):
    out = tmp_path / "kn"
    args = (
        "locate",
        "knowledge-neurons",
        *COMMON,
        "--facts",
        FACTS,
        "--limit",
        "4",
        "--steps",
        "6",
        "--out",
        out,
    )
    code, stdout, _ = run_cli(capsys, *args, "--format", "json")
    assert code in (0, None)
    result = json.loads(stdout)
    assert [f["case_id"] for f in result["facts"]] == ["0", "1", "2", "3"]
    for fact in result["facts"]:
        scores = [n[2] for n in fact["neurons"]]
        assert scores == sorted(scores, reverse=True)
        assert all(0 <= n[0] < 4 and 0 <= n[1] < 512 for n in fact["neurons"])
    assert sum(result["metrics"]["neurons_per_layer"].values()) == sum(
        len(f["neurons"]) for f in result["facts"]
    )
    assert (out / "neurons.graphml").is_file() and (out / "figures" / "neurons_per_layer.png").is_file()
    # suppress reuses the stored neurons of the same configuration
    code, stdout, _ = run_cli(
        capsys, "locate", "suppress", *COMMON, "--facts", FACTS, "--limit", "4", "--steps", "6", "--out", out,
        "--format", "json",
    )  # fmt: skip
    summary = json.loads(stdout)["summary"]
    assert summary["mode"] == "suppress" and summary["facts"] + summary["facts_without_neurons"] == 4
    assert "Suppress knowledge neurons" in (out / "report.md").read_text()


def test_layer_out_of_range_is_one_line(capsys):
    code, _, err = run_cli(capsys, "locate", "knowledge-neurons", *COMMON, "--facts", FACTS, "--layers", "7")
    assert_one_line_error(code, err, "layer", "7", "0..3")


def test_locate_neurons_with_a_language_model_names_the_new_command(capsys):
    code, _, err = run_cli(capsys, "locate", "neurons", *COMMON, "--facts", FACTS, "--steps", "6")
    assert_one_line_error(code, err, "locate knowledge-neurons")


def test_edit_apply_undo_eval_round_trip(tmp_path, capsys):
    from memloc.core.lm.loading import load_language_model
    from memloc.edit.delta import weights_hash

    edited, restored = tmp_path / "edited", tmp_path / "restored"
    code, stdout, _ = run_cli(
        capsys, "edit", "apply", "--method", "kn", *COMMON, "--facts", FACTS, "--limit", "2", "--out", edited,
        "--format", "json",
    )  # fmt: skip
    assert code in (0, None)
    applied = json.loads(stdout)
    assert applied["edits"] + len(applied["refused"]) == 2 and applied["edits"] >= 1
    ledger = json.loads((edited / "ledger.json").read_text())
    assert ledger["base_hash"] == applied["base_hash"] == weights_hash(load_language_model(str(MODEL)).model)
    # the input is never written over, and a full folder is refused
    code, _, err = run_cli(
        capsys, "edit", "apply", "--method", "kn", *COMMON, "--facts", FACTS, "--limit", "1", "--out", edited
    )
    assert_one_line_error(code, err, "not empty")
    code, stdout, _ = run_cli(capsys, "edit", "undo", edited, "--out", restored, "--format", "json")
    assert json.loads(stdout)["restored_hash"] == applied["base_hash"]
    assert weights_hash(load_language_model(str(restored)).model) == applied["base_hash"]
    code, stdout, _ = run_cli(
        capsys, "edit", "eval", "--model", edited, "--facts", FACTS, "--limit", "2", "--device", "cpu",
        "--fluency-tokens", "10", "--format", "json",
    )  # fmt: skip
    result = json.loads(stdout)
    for stage in ("pre", "post"):
        assert set(result[stage]) >= {"ES", "PS", "NS", "S", "EM", "PM", "NM", "fluency"}
    assert result["pre"]["ES"] == 0.0 and result["post"]["ES"] > 0
    assert "seconds_per_edit" in result


def test_undo_refuses_a_ledger_that_does_not_match(tmp_path, capsys):
    edited = tmp_path / "edited"
    run_cli(
        capsys, "edit", "apply", "--method", "kn", *COMMON, "--facts", FACTS, "--limit", "1", "--out", edited
    )
    ledger = json.loads((edited / "ledger.json").read_text())
    ledger["edited_hash"] = "f" * 64
    (edited / "ledger.json").write_text(json.dumps(ledger))
    code, _, err = run_cli(capsys, "edit", "undo", edited, "--out", tmp_path / "r")
    assert_one_line_error(code, err, "does not match the model")


def test_edit_refuses_equal_targets(tmp_path, capsys):
    record = {
        "prompt": "The capital of {} is",
        "subject": "Gafou",
        "target": "Velmora",
        "target_new": "Velmora",
    }
    path = _facts_file(tmp_path, record)
    code, _, err = run_cli(
        capsys, "edit", "apply", "--method", "rome", *COMMON, "--facts", path, "--out", tmp_path / "o"
    )
    assert_one_line_error(code, err, "target_new", "equals target_true")
    assert not (tmp_path / "o").exists()


def test_last_subject_only_trace_gives_the_same_best_layer_rows():
    from memloc.core.lm.facts import load_facts
    from memloc.core.lm.loading import load_language_model
    from memloc.locate.lm.fact_runs import locate_trace
    from memloc.locate.lm.tracing import TraceConfig

    lm = load_language_model(str(MODEL), device="cpu")
    facts = load_facts(FACTS, limit=3)
    config = TraceConfig(samples=3, window=2, kinds=("mlp",))
    full = locate_trace(lm, facts, FACTS, config)
    quick = locate_trace(lm, facts, FACTS, config, last_subject_only=True)
    assert quick.best_layer == full.best_layer
    for a, b in zip(full.traces, quick.traces, strict=True):
        row = a.last_subject
        assert b.grids["mlp"][row] == pytest.approx(a.grids["mlp"][row], rel=1e-5)
        assert all(np.isnan(r).all() for t, r in enumerate(b.grids["mlp"]) if t != row)
