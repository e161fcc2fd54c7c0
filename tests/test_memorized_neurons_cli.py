"""`memloc locate memorized-neurons` on the fixture LM: stored typed result, figure, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from memloc.core.errors import ConfigError, DataError
from memloc.locate.lm.memorized.files import load_memorized_neurons
from memloc.locate.lm.memorized.run import LocalizeRequest
from test_cli import assert_one_line_error, run_cli

MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "fixture-lm"
TEXTS = ("the red fox runs over the hill to the river", "a blue bird sings in the tall green tree today")


def _file(tmp_path: Path, name: str, texts) -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


@pytest.mark.parametrize("method", ["activations", "ig"])
def test_cli_stores_the_typed_result_and_the_figure(tmp_path, capsys, method):
    out = tmp_path / "neurons"
    args = ("locate", "memorized-neurons", "--model", MODEL, "--device", "cpu", "--method", method)
    files = (
        "--sequences",
        _file(tmp_path, "seq.jsonl", TEXTS),
        "--other",
        _file(tmp_path, "o.jsonl", TEXTS[:1]),
    )
    fast = ("--set", "steps=4") if method == "ig" else ()
    code, stdout, _ = run_cli(
        capsys, *args, *files, *fast, "--budget", "0.01", "--out", out, "--format", "json"
    )
    assert code in (0, None)
    data = json.loads(stdout)
    run = load_memorized_neurons(out)
    assert run.method == method and run.scores.shape == (2, 4, 512)
    assert [list(map(list, s.top)) for s in run.sequences] == [s["top"] for s in data["sequences"]]
    k = int(np.ceil(0.01 * 4 * 512))
    assert all(len(s.top) == k and sum(s.per_layer) == k for s in run.sequences)
    # The top neurons are the highest scores, so the stored scores and ranking agree.
    for s, seq in enumerate(run.sequences):
        layer, unit = seq.top[0]
        assert run.scores[s, layer, unit] == run.scores[s].max()
    assert run.overlap.shape == (2, 2) and run.overlap[0, 0] == 1.0
    assert (out / "neurons_per_layer.png").stat().st_size > 1000


def test_a_canaries_file_is_read_as_the_sequences(tmp_path, capsys):
    corpus = _file(tmp_path, "c.jsonl", [TEXTS[0]] * 3)
    planted = tmp_path / "planted.jsonl"
    code, _, _ = run_cli(capsys, "canaries", "make", "--corpus", corpus, "--out", planted, "--repeats", "1,2")
    assert code in (0, None)
    args = ("locate", "memorized-neurons", "--model", MODEL, "--device", "cpu", "--method", "activations")
    code, stdout, _ = run_cli(
        capsys, *args, "--sequences", tmp_path / "planted.canaries.jsonl", "--format", "json"
    )
    assert code in (0, None)
    assert [s["text"][:10] for s in json.loads(stdout)["sequences"]] == ["my PIN is "] * 2


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (("--method", "lasso"), ("method", "zero_out")),
        (("--budget", "0"), ("budget",)),
        (("--set", "steps"), ("--set", "name=value")),
        (("--method", "ig", "--set", "stepz=3"), ("stepz", "steps")),
        (("--method", "ig", "--set", "steps=0"), ("steps",)),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, flags, needles):
    out = tmp_path / "neurons"
    args = ("locate", "memorized-neurons", "--model", MODEL, "--device", "cpu", "--out", out)
    code, _, err = run_cli(capsys, *args, "--sequences", _file(tmp_path, "s.jsonl", TEXTS), *flags)
    assert_one_line_error(code, err, *needles)
    assert not out.exists()


def test_request_validates_itself():
    with pytest.raises(ConfigError, match="max_tokens"):
        LocalizeRequest(max_tokens=1)
    with pytest.raises(DataError, match="no setting"):
        LocalizeRequest("zero_out", settings=(("steps", 3),)).config()
