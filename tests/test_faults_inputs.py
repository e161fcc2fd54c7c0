"""Bad input from issue #12: numbers that are not numbers, labels, --limit, --out.

Each bad command must print one line, exit non-zero and leave nothing that blocks the
corrected command, which the tests then run.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from pathlib import Path

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


def _numeric_fields(cls: type, kind: str) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if str(f.type).split(" | ")[0] == kind]


def test_the_config_audit_sees_every_config():
    names = {c.__name__ for c in CONFIGS}
    assert {"TrainConfig", "FlipConfig", "LayersConfig", "StatsConfig", "MonitorConfig", "EditPlan"} <= names
    assert {"TraceConfig", "KNConfig", "InterventionConfig", "TargetConfig", "KNEditConfig"} <= names


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


def test_neurons_collateral_nan_is_refused_before_anything_is_written(digits_run, capsys, tmp_path):
    out = tmp_path / "neurons.jsonl"
    args = ("locate", "neurons", digits_run.root, "--n", "1", "--max-units", "3", "--device", "cpu")
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
