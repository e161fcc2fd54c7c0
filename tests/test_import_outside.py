"""examples/train_outside.py, a plain-torch run made without memloc, imported and analysed end to end."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import run_cli

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "examples" / "train_outside.py"


def test_the_script_does_not_import_memloc():
    tree = ast.parse(SCRIPT.read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert names and not [n for n in names if n.startswith("memloc")]


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("outside") / "run"
    args = ["--out", out, "--data", "digits", "--epochs", "3", "--width", "8", "--lr", "1e-2"]
    done = subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return out


def test_script_output_is_what_the_readme_names(outside):
    names = sorted(p.name for p in (outside / "checkpoints").iterdir())
    assert names == ["epoch_1.safetensors", "epoch_2.safetensors", "epoch_3.safetensors"]
    given, true = np.load(outside / "labels.npy"), np.load(outside / "true_labels.npy")
    assert given.shape == true.shape and round(0.1 * len(true)) == int((given != true).sum())


def test_import_and_every_locate_command(outside, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the factory is named relative to the repository, as in the README
    run_dir = tmp_path / "imported"
    code, _, err = run_cli(
        capsys, "import", outside / "checkpoints", "--out", run_dir,
        "--model", "examples.outside_models:make_cnn", "--model-args", '{"width": 8}',
        "--data", outside / "data.npz", "--labels", outside / "labels.npy",
        "--true-labels", outside / "true_labels.npy", "--init", outside / "init.safetensors",
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["results"]["history"]] == [0, 1, 2, 3]
    assert metrics["config"]["model"]["source"] == "factory"
    for command in (
        ["locate", "layers", run_dir, "--retrain-epochs", "1"],
        ["locate", "scores", run_dir],
        ["locate", "neurons", run_dir, "--n", "2", "--max-units", "20"],
        ["report", run_dir],
    ):
        code, _, err = run_cli(capsys, *command)
        assert code == 0, err
    layers = json.loads((run_dir / "locate" / "layers_report.json").read_text())
    assert {c["layer"] for c in layers["results"]["rewinding"]} == {"0", "3", "8"}  # the default groups
    assert (run_dir / "report" / "report.html").is_file()


def test_a_vit_trained_outside_in_trainer_folders_imports_with_the_factory(tmp_path, capsys, monkeypatch):
    """transformers saves a ViT under other names than its modules; the import maps them back."""
    out = tmp_path / "vit"
    args = ["--out", out, "--arch", "vit", "--epochs", "2", "--width", "8"]
    done = subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    monkeypatch.chdir(REPO)
    run_dir = tmp_path / "imported"
    code, _, err = run_cli(
        capsys, "import", out / "checkpoints", "--out", run_dir,
        "--model", "examples.outside_models:make_vit", "--model-args", (out / "vit" / "model_args.json").read_text(),
        "--groups", '["vit.layers.0", "vit.layers.1", "classifier"]',
        "--data", out / "data.npz", "--labels", out / "labels.npy",
        "--true-labels", out / "true_labels.npy", "--init", out / "vit" / "model.safetensors",
    )  # fmt: skip
    assert code == 0, err
    manifest = json.loads((run_dir / "checkpoints" / "imported.json").read_text())
    steps = [c["step"] for c in manifest["checkpoints"]]
    assert steps[0] is None and steps[1] < steps[2]  # the init, then the Trainer's global steps in order
    for command in (["locate", "layers", run_dir, "--retrain-epochs", "1"], ["locate", "scores", run_dir]):
        code, _, err = run_cli(capsys, *command)
        assert code == 0, err


def test_saved_transformers_names_map_to_the_module_names(tmp_path):
    from memloc.core.checkpoints import load_tensors
    from memloc.core.classifier.hf_keys import to_module_names

    from examples.outside_models import make_vit

    model = make_vit()
    model.save_pretrained(tmp_path)
    saved = load_tensors(tmp_path / "model.safetensors")
    assert set(saved) != set(model.state_dict())  # transformers 5 writes the original names
    mapped = to_module_names(model, saved)
    assert set(mapped) == set(model.state_dict())
    for name, tensor in model.state_dict().items():
        assert torch.equal(mapped[name], tensor)
    partial = dict(list(saved.items())[1:])
    assert to_module_names(model, partial) is partial  # not a full set: left for load_into to name
