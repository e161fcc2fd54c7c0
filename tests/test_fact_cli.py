"""The facts commands end to end on the fixture LM: JSON output, resuming, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

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
