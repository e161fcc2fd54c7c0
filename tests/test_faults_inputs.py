"""Bad input from issue #12: numbers that are not numbers, labels, --limit, --out.

Each bad command must print one line, exit non-zero and leave nothing that blocks the
corrected command, which the tests then run.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import pkgutil
import shutil
from pathlib import Path

import numpy as np
import pytest
from memloc.core.errors import ConfigError
from test_cli import assert_one_line_error, run_cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODEL = FIXTURES / "fixture-lm"
FACTS = FIXTURES / "fixture-facts.json"
TRAIN = ("train", "--data", "digits", "--arch", "mlp", "--limit", "100", "--epochs", "1")

# The fields without a default, per config class; a new config with required fields
# makes the generic tests below fail until it is listed here.
REQUIRED = {
    "TrainConfig": {"data": "digits", "arch": "mlp"},
    "RewindConfig": {"epochs": (0,)},
    "RomeConfig": {"layer": 0},
    "EditPlan": {"method": "rome"},
    "ImportConfig": {"checkpoints": ("ckpt",), "model": "mlp", "data": "digits", "labels": "labels.npy"},
    "EnsembleConfig": {"models": 4},
    "MembershipConfig": {"models": 4},
    "FitConfig": {"epochs": 1, "batch_size": 8, "lr": 1e-3},
}


def _config_classes() -> list[type]:
    """Every frozen config dataclass of the library (named *Config, or EditPlan)."""
    found = {}
    for package in ("core", "locate", "edit"):
        root = importlib.import_module(f"memloc.{package}")
        for info in pkgutil.walk_packages(root.__path__, f"memloc.{package}."):
            module = importlib.import_module(info.name)
            for name, cls in inspect.getmembers(module, inspect.isclass):
                ours = cls.__module__ == module.__name__ and dataclasses.is_dataclass(cls)
                if ours and (name.endswith("Config") or name == "EditPlan"):
                    found[name] = cls
    return [found[k] for k in sorted(found)]


CONFIGS = _config_classes()


@pytest.fixture
def own_run(digits_run, tmp_path):
    """A copy of the shared run, for commands that write into their run folder."""
    from memloc.core.classifier.runs import RunFolder

    return RunFolder(shutil.copytree(digits_run.root, tmp_path / "own-run"))


def _numeric_fields(cls: type, kind: str) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if str(f.type).split(" | ")[0] == kind]


def test_the_config_audit_sees_every_config():
    names = {c.__name__ for c in CONFIGS}
    assert {"TrainConfig", "FlipConfig", "LayersConfig", "StatsConfig", "MonitorConfig", "EditPlan"} <= names
    assert {"TraceConfig", "KNConfig", "InterventionConfig", "TargetConfig", "KNEditConfig"} <= names
    train = CONFIGS[[c.__name__ for c in CONFIGS].index("TrainConfig")]
    assert set(_numeric_fields(train, "float")) == {"noise", "lr", "weight_decay", "width"}
    assert {"epochs", "limit", "seed", "batch_size", "num_classes"} <= set(_numeric_fields(train, "int"))


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_float_field_refuses_nan_and_inf(cls):
    base = REQUIRED.get(cls.__name__, {})
    cls(**base)  # the defaults are valid
    for name in _numeric_fields(cls, "float"):
        for bad in (float("nan"), float("inf"), float("-inf")):
            with pytest.raises(ConfigError) as info:
                cls(**{**base, name: bad})
            assert info.value.field == name, (cls.__name__, name, bad)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_int_field_refuses_minus_one(cls):
    # No int field of a config (counts, sizes, layers, seeds) has a meaning for -1.
    base = REQUIRED.get(cls.__name__, {})
    for name in _numeric_fields(cls, "int"):
        with pytest.raises(ConfigError) as info:
            cls(**{**base, name: -1})
        assert info.value.field == name, (cls.__name__, name)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--lr", "nan"),
        ("--lr", "inf"),
        ("--width", "nan"),
        ("--width", "inf"),
        ("--width", "0"),
        ("--width", "-1"),
        ("--noise", "nan"),
        ("--seed", "-1"),
    ],
)
def test_train_bad_number_is_one_line_and_writes_nothing(tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *TRAIN, "--out", out, flag, value)
    assert_one_line_error(code, err, flag, value)
    assert not out.exists()
    code, _, err = run_cli(capsys, *TRAIN, "--out", out)
    assert code == 0, err


def test_neurons_collateral_nan_is_refused_before_anything_is_written(own_run, capsys, tmp_path):
    out = tmp_path / "neurons.jsonl"
    args = ("locate", "neurons", own_run.root, "--n", "1", "--max-units", "3", "--device", "cpu")
    code, _, err = run_cli(capsys, *args, "--out", out, "--collateral", "nan")
    assert_one_line_error(code, err, "--collateral", "nan")
    assert not out.exists()
    code, _, err = run_cli(capsys, *args, "--out", out)
    assert code == 0, err


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_edit_max_update_ratio_is_checked_before_the_folder(tmp_path, capsys, value):
    out = tmp_path / "edited"
    args = ("edit", "apply", "--model", MODEL, "--device", "cpu", "--method", "rome", "--facts", FACTS)
    code, _, err = run_cli(
        capsys, *args, "--layers", "1", "--limit", "1", "--out", out, "--max-update-ratio", value
    )
    assert_one_line_error(code, err, "--max-update-ratio", value)
    assert not out.exists()


# --- labels and values of the data ------------------------------------------------


def _npz(path: Path, y_train, y_test=None, x_train=None) -> Path:
    """A small .npz data set: 8x8 float images, labels as given (default test: 0..3)."""
    rng = np.random.default_rng(0)
    y_train = np.asarray(y_train, dtype=np.int64)
    y_test = np.arange(40) % 4 if y_test is None else np.asarray(y_test, dtype=np.int64)
    x_train = rng.random((len(y_train), 8, 8), dtype=np.float32) if x_train is None else x_train
    x_test = rng.random((len(y_test), 8, 8), dtype=np.float32)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def _train_on(data: Path, out: Path, *extra: str) -> tuple:
    return ("train", "--data", data, "--arch", "mlp", "--epochs", "1", "--out", out, *extra)


@pytest.mark.parametrize("extra", [(), ("--limit", "100")])
def test_a_stray_label_is_named_and_not_a_new_class(tmp_path, capsys, extra):
    labels = np.arange(200) % 4
    labels[7] = 99
    data, out = _npz(tmp_path / "stray.npz", labels), tmp_path / "run"
    code, _, err = run_cli(capsys, *_train_on(data, out, *extra))
    assert_one_line_error(code, err, "stray.npz", "y_train", "99", "--num-classes")
    assert not out.exists()
    _npz(data, np.arange(200) % 4)  # the corrected file
    code, _, err = run_cli(capsys, *_train_on(data, out, *extra))
    assert code == 0, err


def test_missing_classes_are_named(tmp_path, capsys):
    data = _npz(tmp_path / "gap.npz", np.arange(200) % 4 * 2, y_test=np.arange(40) % 4 * 2)
    code, _, err = run_cli(capsys, *_train_on(data, tmp_path / "run"))
    assert_one_line_error(code, err, "gap.npz", "y_train", "1, 3, 5")


def test_test_labels_outside_the_training_classes(tmp_path, capsys):
    data = _npz(tmp_path / "t.npz", np.arange(200) % 4, y_test=np.arange(40) % 5)
    code, _, err = run_cli(capsys, *_train_on(data, tmp_path / "run"))
    assert_one_line_error(code, err, "t.npz", "y_test", "4")


def test_declared_num_classes(tmp_path, capsys):
    from memloc.core.classifier.data import load_dataset

    data = _npz(tmp_path / "d.npz", np.arange(200) % 4)
    assert load_dataset(str(data)).num_classes == 4
    assert load_dataset(str(data), num_classes=6).num_classes == 6
    code, _, err = run_cli(capsys, *_train_on(data, tmp_path / "small", "--num-classes", "3"))
    assert_one_line_error(code, err, "d.npz", "y_train", "3", "--num-classes 3")
    assert not (tmp_path / "small").exists()
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *_train_on(data, out, "--num-classes", "6", "--noise", "0.5"))
    assert code == 0, err
    spec = json.loads((out / "config.json").read_text())
    assert spec["train"]["num_classes"] == 6 and spec["model"]["num_classes"] == 6
    code, _, err = run_cli(capsys, "locate", "scores", out, "--device", "cpu")
    assert code == 0, err  # the run reloads its data with the declared classes


def test_runs_without_num_classes_keep_their_config(digits_run):
    # Run folders from before --num-classes have no such key; resuming them must not
    # see a different run.
    from memloc.core.training.train import TrainConfig

    stored = digits_run.config()["train"]
    assert "num_classes" not in stored
    assert TrainConfig(**stored).to_dict() == stored


def test_a_class_with_one_example_under_limit(tmp_path, capsys):
    labels = np.arange(200) % 4
    labels[3] = 4  # class 4 has a single example: a stratified subset cannot keep it
    data = _npz(tmp_path / "one.npz", labels, y_test=np.arange(40) % 5)
    code, _, err = run_cli(capsys, *_train_on(data, tmp_path / "run", "--limit", "100"))
    assert_one_line_error(code, err, "--limit", "class 4")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_images_are_named_not_blamed_on_lr(tmp_path, capsys, bad):
    rng = np.random.default_rng(1)
    x = rng.random((200, 8, 8), dtype=np.float32)
    x[5, 2, 3] = bad
    data, out = _npz(tmp_path / "x.npz", np.arange(200) % 4, x_train=x), tmp_path / "run"
    code, _, err = run_cli(capsys, *_train_on(data, out))
    assert_one_line_error(code, err, "x.npz", "x_train", "example 5")
    assert "--lr" not in err and not out.exists()


def test_non_finite_init_weights_are_named_not_blamed_on_lr(tmp_path, capsys, digits_run):
    from memloc.core.checkpoints import load_tensors, save_tensors

    weights = load_tensors(digits_run.checkpoint(0))
    name = sorted(weights)[0]
    weights[name].view(-1)[0] = float("nan")
    save_tensors(tmp_path / "init.safetensors", weights)
    out = tmp_path / "run"
    args = ("train", "--data", "digits", "--arch", "mlp", "--limit", "300", "--epochs", "1", "--out", out)
    code, _, err = run_cli(capsys, *args, "--init", tmp_path / "init.safetensors")
    assert_one_line_error(code, err, "init.safetensors", name, "NaN")
    assert "--lr" not in err and not out.exists()


def test_true_divergence_still_blames_lr(tmp_path, capsys):
    code, _, err = run_cli(capsys, *TRAIN, "--out", tmp_path / "run", "--lr", "1e30")
    # The progress bar has begun by then; the error is still one line below it.
    errors = [line for line in err.splitlines() if line.startswith("memloc: error: ")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in err
    assert "diverged" in errors[0] and "--lr" in errors[0]


# --- --limit: a positive count everywhere ------------------------------------------


def test_train_limit_above_the_data_is_a_note(tmp_path, capsys):
    out = tmp_path / "run"
    args = ("train", "--data", "digits", "--arch", "mlp", "--epochs", "1", "--out", out)
    code, _, err = run_cli(capsys, *args, "--limit", "100000", "--format", "json")
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("memloc: note: ")]
    assert notes == ["memloc: note: --limit 100000 exceeds the 1437 training examples; using all"]


@pytest.mark.parametrize("value", ["0", "-1"])
def test_train_limit_must_be_positive(tmp_path, capsys, value):
    code, _, err = run_cli(capsys, *TRAIN[:-4], "--epochs", "1", "--out", tmp_path / "run", "--limit", value)
    assert_one_line_error(code, err, "--limit", value)
    assert not (tmp_path / "run").exists()


FACT_COMMANDS = {
    "trace": ("locate", "trace", "--samples", "1", "--window", "1", "--kind", "mlp"),
    "knowledge-neurons": ("locate", "knowledge-neurons"),
    "suppress": ("locate", "suppress"),
    "edit apply": ("edit", "apply", "--method", "rome", "--layers", "1"),
    "edit eval": ("edit", "eval"),
}


@pytest.mark.parametrize("value", ["0", "-1"])
@pytest.mark.parametrize("command", sorted(FACT_COMMANDS))
def test_lm_limit_must_be_positive(tmp_path, capsys, command, value):
    out = tmp_path / "out"
    args = (*FACT_COMMANDS[command], "--model", MODEL, "--device", "cpu", "--facts", FACTS)
    code, _, err = run_cli(capsys, *args, "--out", out, "--limit", value)
    assert_one_line_error(code, err, "--limit", value, "positive")
    assert not out.exists()


def test_lm_limit_above_the_facts_is_a_note(tmp_path, capsys):
    from memloc.core.lm.facts import load_facts

    two = tmp_path / "two.jsonl"
    lines = FACTS.read_text()
    records = json.loads(lines)[:2]
    two.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert len(load_facts(two, limit=5)) == 2
    args = (*FACT_COMMANDS["trace"], "--model", MODEL, "--device", "cpu", "--facts", two, "--format", "json")
    code, out, err = run_cli(capsys, *args, "--limit", "5")
    assert code in (0, None), err
    assert len(json.loads(out)["facts"]) == 2
    notes = [line for line in err.splitlines() if line.startswith("memloc: note: ")]
    assert notes == ["memloc: note: --limit 5 exceeds the 2 facts in two.jsonl; using all"]


# --- --out: a place memloc can write ----------------------------------------------


def _out_commands(run: Path) -> dict[str, tuple]:
    """Each command with --out, and whether its --out is a folder (else a results file)."""
    edit = ("--model", MODEL, "--device", "cpu", "--facts", FACTS, "--limit", "1")
    return {
        "train": (TRAIN, True),
        "edit apply": (("edit", "apply", *edit, "--method", "rome", "--layers", "1"), True),
        "edit undo": (("edit", "undo", MODEL, "--device", "cpu"), True),
        "report": (("report", run), True),
        "locate neurons": (
            ("locate", "neurons", run, "--n", "1", "--max-units", "3", "--device", "cpu"),
            False,
        ),
    }


OUT_COMMANDS = ["train", "edit apply", "edit undo", "report", "locate neurons"]


@pytest.mark.parametrize("command", OUT_COMMANDS)
def test_out_below_a_file(tmp_path, capsys, own_run, command):
    args, _ = _out_commands(own_run.root)[command]
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine\n")
    code, _, err = run_cli(capsys, *args, "--out", blocker / "sub")
    assert_one_line_error(code, err, "--out", str(blocker), "is a file")
    assert blocker.read_text() == "mine\n"


@pytest.mark.parametrize("command", OUT_COMMANDS)
def test_out_names_the_wrong_kind(tmp_path, capsys, own_run, command):
    args, folder = _out_commands(own_run.root)[command]
    if folder:
        wrong = tmp_path / "notes.txt"
        wrong.write_text("mine\n")
        needle = "is a file"
    else:
        wrong = tmp_path / "a-folder"
        wrong.mkdir()
        needle = "is a folder"
    code, _, err = run_cli(capsys, *args, "--out", wrong)
    assert_one_line_error(code, err, "--out", str(wrong), needle)
    assert wrong.is_dir() or wrong.read_text() == "mine\n"


@pytest.mark.parametrize("command", OUT_COMMANDS)
def test_out_in_a_read_only_folder(tmp_path, capsys, own_run, monkeypatch, command):
    # We run as root, which writes through any permission, and Python lives under
    # /root (0700), so it cannot be run as nobody either: the permission check is
    # told the folder is read-only through os.access instead.
    import os

    import memloc.core.paths

    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(
        memloc.core.paths.os,
        "access",
        lambda p, mode, **kw: False if Path(p) == locked and mode & os.W_OK else real(p, mode, **kw),
    )
    args, _ = _out_commands(own_run.root)[command]
    code, _, err = run_cli(capsys, *args, "--out", locked / "new" / "out.jsonl")
    assert_one_line_error(code, err, "--out", str(locked), "not writable")
    assert list(locked.iterdir()) == []


def test_corrected_out_succeeds(tmp_path, capsys, own_run):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine\n")
    for command in ("train", "report", "locate neurons"):
        args, _ = _out_commands(own_run.root)[command]
        code, _, err = run_cli(capsys, *args, "--out", blocker / "x")
        assert code not in (0, None)
        code, _, err = run_cli(capsys, *args, "--out", tmp_path / command.replace(" ", "-") / "x.jsonl")
        assert code in (0, None), (command, err)


# --- the corrected command succeeds after each bad one ------------------------------


def test_edit_apply_and_undo_after_bad_input(tmp_path, capsys):
    edited, base, blocker = tmp_path / "edited", tmp_path / "base", tmp_path / "notes.txt"
    blocker.write_text("mine\n")
    args = ("edit", "apply", "--model", MODEL, "--device", "cpu", "--method", "rome", "--facts", FACTS)
    args = (*args, "--limit", "1", "--layers", "1", "--samples", "8")
    for bad in (("--max-update-ratio", "nan"), ("--limit", "0"), ("--out", blocker / "x")):
        code, _, err = run_cli(capsys, *args, "--out", edited, *bad)
        assert code not in (0, None) and not edited.exists(), err
    code, _, err = run_cli(capsys, *args, "--out", edited, "--max-update-ratio", "0.5")
    assert code in (0, None), err
    undo = ("edit", "undo", edited, "--device", "cpu")
    code, _, err = run_cli(capsys, *undo, "--out", blocker)
    assert_one_line_error(code, err, "--out", "is a file")
    code, _, err = run_cli(capsys, *undo, "--out", base)
    assert code in (0, None), err
    assert (base / "config.json").is_file()


def test_lm_command_after_a_bad_limit(tmp_path, capsys):
    out = tmp_path / "trace"
    args = (*FACT_COMMANDS["trace"], "--model", MODEL, "--device", "cpu", "--facts", FACTS, "--out", out)
    code, _, err = run_cli(capsys, *args, "--limit", "-1")
    assert code not in (0, None) and not out.exists()
    code, _, err = run_cli(capsys, *args, "--limit", "1")
    assert code in (0, None), err


def test_train_after_bad_data_and_init(tmp_path, capsys, digits_run):
    from memloc.core.checkpoints import load_tensors, save_tensors

    x = np.random.default_rng(1).random((200, 8, 8), dtype=np.float32)
    x[9, 0, 0] = np.nan
    data, out = _npz(tmp_path / "x.npz", np.arange(200) % 4 * 2, x_train=x), tmp_path / "run"
    for _ in range(2):  # first the gaps in the labels, then the NaN pixel
        code, _, err = run_cli(capsys, *_train_on(data, out))
        assert code not in (0, None) and not out.exists(), err
        _npz(data, np.arange(200) % 4, x_train=x)
    _npz(data, np.arange(200) % 4)
    code, _, err = run_cli(capsys, *_train_on(data, out))
    assert code == 0, err

    weights = load_tensors(digits_run.checkpoint(0))
    weights[sorted(weights)[0]].view(-1)[0] = float("inf")
    save_tensors(tmp_path / "init.safetensors", weights)
    args = ("train", "--data", "digits", "--arch", "mlp", "--limit", "300", "--epochs", "1")
    code, _, err = run_cli(capsys, *args, "--out", tmp_path / "r2", "--init", tmp_path / "init.safetensors")
    assert code not in (0, None) and not (tmp_path / "r2").exists(), err
    save_tensors(tmp_path / "init.safetensors", load_tensors(digits_run.checkpoint(0)))
    code, _, err = run_cli(capsys, *args, "--out", tmp_path / "r2", "--init", tmp_path / "init.safetensors")
    assert code == 0, err


def test_a_text_file_named_npz_given_as_data_is_not_called_pickled(tmp_path, capsys):
    # numpy reads a file that is not a zip archive as a pickle, hence its "pickled (object) data".
    fake = tmp_path / "text.npz"
    fake.write_text("hello, not an archive")
    code, _, err = run_cli(capsys, "train", "--data", fake, "--arch", "mlp", "--out", tmp_path / "r")
    assert code == 1 and "pickled" not in err
    assert "text.npz is not a valid npz archive" in err and not (tmp_path / "r").exists()
