"""The CLI end to end: outputs, and one clear line for each kind of bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from memloc.cli.app import main
from memloc.core.checkpoints import load_tensors, save_tensors
from torch import nn


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def assert_one_line_error(code, err, *needles):
    assert code not in (0, None)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("memloc: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


TRAIN = ("train", "--data", "digits", "--arch", "mlp", "--limit", "200", "--epochs", "2")


def test_train_json_summary_and_inspect(tmp_path, capsys):
    code, out, _ = run_cli(capsys, *TRAIN, "--out", tmp_path / "r", "--format", "json", "--noise", "0.2")
    assert code == 0
    summary = json.loads(out)
    for key in ("clean_train_acc", "noisy_train_acc", "test_acc", "epochs", "seconds"):
        assert key in summary
    assert summary["epochs"] == 2 and summary["noisy_examples"] == 40
    code, out, _ = run_cli(capsys, "models", "inspect", tmp_path / "r", "--format", "json")
    info = json.loads(out)
    assert [(x["name"], x["units"]) for x in info["layers"]] == [("fc1", 256), ("fc2", 256), ("head", 10)]
    assert info["epochs"] == [0, 1, 2]
    code, out, _ = run_cli(capsys, "models", "inspect", tmp_path / "r")
    assert code == 0 and "blocks.1.out" in out and "fc2" in out
    # rerunning the same command resumes a finished run: nothing is retrained
    before = (tmp_path / "r/checkpoints/epoch_002.safetensors").stat().st_mtime_ns
    code, out, _ = run_cli(capsys, *TRAIN, "--out", tmp_path / "r", "--format", "json", "--noise", "0.2")
    assert code == 0 and json.loads(out)["epochs"] == 2
    assert (tmp_path / "r/checkpoints/epoch_002.safetensors").stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("train", "--data", "cifar11"), ["unknown data set 'cifar11'", "digits"]),
        (("train", "--data", "digits", "--arch", "vgg"), ["'vgg'", "resnet9"]),
        (("train", "--data", "digits", "--noise", "1.0"), ["--noise", "[0, 1)"]),
        (("train", "--data", "digits", "--noise", "-0.1"), ["--noise"]),
        (("train", "--data", "/no/such/folder"), ["/no/such/folder", "does not exist"]),
        (("train", "--data", "digits", "--init", "/no/such.safetensors"), ["does not exist"]),
        (("train", "--data", "digits", "--device", "tpu"), ["unknown device 'tpu'"]),
    ],
)
def test_bad_input_gets_one_line_and_leaves_nothing(tmp_path, capsys, args, needles):
    code, out, err = run_cli(capsys, *args, "--out", tmp_path / "r")
    assert_one_line_error(code, err, *needles)
    assert out == "" and not (tmp_path / "r").exists()


def test_checkpoint_that_does_not_match_the_model(tmp_path, capsys):
    save_tensors(tmp_path / "other.safetensors", nn.Linear(3, 2).state_dict())
    code, _, err = run_cli(capsys, *TRAIN, "--init", tmp_path / "other.safetensors", "--out", tmp_path / "r")
    assert_one_line_error(code, err, "does not match the model", "missing")
    assert not (tmp_path / "r").exists()
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 20)
    code, _, err = run_cli(capsys, *TRAIN, "--init", tmp_path / "broken.safetensors", "--out", tmp_path / "r")
    assert_one_line_error(code, err, "not a valid safetensors file")


def test_pickle_needing_code_is_refused_unless_trusted(tmp_path, capsys, digits_run):
    from test_checkpoints import RunsCode

    weights = load_tensors(digits_run.checkpoint(0))
    marker = tmp_path / "marker"
    torch.save({**weights, "note": RunsCode(marker)}, tmp_path / "init.pt")
    args = ("train", "--data", "digits", "--arch", "mlp", "--limit", "300", "--epochs", "1", "--noise", "0.2")
    code, _, err = run_cli(capsys, *args, "--init", tmp_path / "init.pt", "--out", tmp_path / "r")
    assert_one_line_error(code, err, "--trust-pickle")
    assert not marker.exists() and not (tmp_path / "r").exists()
    code, _, _ = run_cli(
        capsys, *args, "--init", tmp_path / "init.pt", "--trust-pickle", "--out", tmp_path / "r"
    )
    assert code == 0 and marker.exists()


def test_output_folder_of_a_different_run(tmp_path, capsys, digits_run):
    out = tmp_path / "copy"
    shutil.copytree(digits_run.root, out)
    config_before = (out / "config.json").read_bytes()
    code, _, err = run_cli(capsys, *TRAIN, "--noise", "0.3", "--out", out)
    assert_one_line_error(code, err, "holds a different run", "train.noise")
    assert (out / "config.json").read_bytes() == config_before


def test_inspect_bad_folders(tmp_path, capsys):
    code, _, err = run_cli(capsys, "models", "inspect", tmp_path / "none")
    assert_one_line_error(code, err, "does not exist")
    code, _, err = run_cli(capsys, "models", "inspect", tmp_path)
    assert_one_line_error(code, err, "no config.json")


def test_debug_shows_the_traceback(tmp_path, capsys):
    from memloc.core.errors import DataError

    with pytest.raises(DataError):
        main(["train", "--data", "cifar11", "--out", str(tmp_path / "r"), "--debug"])


def test_console_script_is_installed():
    # Beside this interpreter: a project .venv that is not activated is not on PATH.
    beside = Path(sys.executable).parent / "memloc"
    script = str(beside) if beside.is_file() else shutil.which("memloc") or "memloc"
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "train" in result.stdout and "models" in result.stdout


def test_demo_end_to_end_on_digits(tmp_path, capsys):
    code, out, _ = run_cli(
        capsys, "demo", "--data", "digits", "--no-lm", "--out", tmp_path, "--format", "json"
    )
    assert code == 0
    result = json.loads(out)
    assert result["train"]["noisy_train_acc"] >= 0.99
    assert set(result["auroc"]) == {"csl", "forgetting", "learning_time"}
    assert result["neurons"]["noisy"]["examples"] == 20 and result["neurons"]["clean"]["examples"] == 20
    assert (tmp_path / "report/report.html").stat().st_size > 50_000
    assert "units_to_flip" in (tmp_path / "report/report.html").read_text()
    assert (tmp_path / "run/locate/layers_report.json").is_file()
    headline = result["ensemble"]
    assert headline["models"] == 4 and headline["executor"] == "batched" and headline["fz_mem_auroc"] > 0.9
    assert headline["lira"]["loss"]["auc"] > 0.5 and -1 <= headline["spearman_fz_mem_csl"] <= 1
    assert "LiRA membership inference" in (tmp_path / "report/report.md").read_text()


@pytest.fixture
def run_copy(tmp_path, digits_run):
    """A private copy of the shared run, for commands that write into it."""
    return shutil.copytree(digits_run.root, tmp_path / "run-copy")


def test_locate_bad_input(tmp_path, capsys, run_copy):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/config.json").write_text("{}")
    code, _, err = run_cli(capsys, "locate", "layers", tmp_path / "empty")
    assert_one_line_error(code, err, "has no checkpoints")
    code, _, err = run_cli(capsys, "locate", "layers", run_copy, "--epoch", "0", "--epoch", "12")
    assert_one_line_error(code, err, "epoch 12 is not in", "0-3")
    code, _, err = run_cli(capsys, "locate", "layers", run_copy, "--layer", "conv9")
    assert_one_line_error(code, err, "'conv9' is not in the model", "valid layers: fc1, fc2, head")
    code, _, err = run_cli(capsys, "locate", "scores", tmp_path / "missing")
    assert_one_line_error(code, err, "does not exist")
    code, _, err = run_cli(capsys, "report", tmp_path / "empty")
    assert_one_line_error(code, err, "has no checkpoints")


def test_locate_json_outputs(capsys, run_copy):
    code, out, _ = run_cli(capsys, "locate", "scores", run_copy, "--format", "json")
    assert code == 0 and set(json.loads(out)["auroc"]) == {"csl", "forgetting", "learning_time"}
    args = ("locate", "layers", run_copy, "--epoch", "0", "--epoch", "1", "--retrain-epochs", "1")
    code, out, _ = run_cli(capsys, *args, "--format", "json")
    result = json.loads(out)
    assert {"rewinding", "retraining", "gradients"} <= set(result)
    assert {"layer", "epoch", "clean_acc", "noisy_acc", "noisy_orig_acc", "test_acc"} == set(
        result["rewinding"][0]
    )
    assert {"layer", "epoch", "clean_acc", "noisy_acc", "test_acc"} <= set(result["retraining"][0])
    assert {"layer", "epoch", "clean_norm", "noisy_norm", "cosine"} == set(result["gradients"][0])
    code, out, _ = run_cli(capsys, "report", run_copy, "--format", "json")
    assert code == 0 and json.loads(out)["html"].endswith("report.html")
