"""The demo's canary loop on the fixture LM: plant, exposure, localize, unlearn, undo."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from memloc.core.errors import ConfigError, DataError
from memloc.core.lm.loading import load_language_model
from memloc.edit.delta import weights_hash
from memloc.edit.demo_unlearn import DemoUnlearnConfig, plant_and_unlearn, unlearn_demo_section

MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "fixture-lm"
TEMPLATE = "the {choice:winter|painter|weaver|people} is {choice:quiet|purple|official|built}"


@pytest.fixture(scope="module")
def loop():
    lm = load_language_model(str(MODEL), device="cpu")
    base = weights_hash(lm.model)
    # Zero-Out is exact and quick at the fixture's 2,048 neurons.
    config = DemoUnlearnConfig(
        template=TEMPLATE, ratio=0.02, budget=0.02, method="zero_out", settings=(), seed=1
    )
    return lm, base, config, plant_and_unlearn(lm, config)


def test_the_planted_canary_ranks_first_and_unlearning_lowers_it(loop):
    _, _, config, result = loop
    assert result.canary == config.canary().text and result.space_size == 16
    assert result.exposure_planted == pytest.approx(math.log2(16))  # planted: the secret is the top candidate
    assert result.exposure_planted > result.exposure_base
    # 16 candidates are too few for the fixture's secret to lose its first place; SmolLM2's does (README).
    assert result.exposure_unlearned <= result.exposure_planted
    assert result.completion_planted.split() == config.canary().text.split()[-3:]
    assert result.planted_neurons == result.unlearned_neurons == math.ceil(0.02 * 4 * 512)
    assert result.recall > 0.5  # random would find about 0.02 of the planted neurons


def test_the_model_is_untouched_and_the_undo_is_exact(loop):
    lm, base, _, result = loop
    assert result.undone_bit_exact
    assert weights_hash(lm.model) == base


def test_the_loop_reproduces_from_its_seed_and_makes_a_report_section(loop):
    lm, _, config, result = loop
    assert plant_and_unlearn(lm, config) == result
    section = unlearn_demo_section(result)
    assert [row["model"] for row in section.tables[0][1]] == ["as shipped", "canary planted", "unlearned"]


def test_config_refuses_a_space_too_large_and_a_template_without_a_slot():
    with pytest.raises(ConfigError, match="template"):
        DemoUnlearnConfig(template="my PIN is {digits:6}")
    with pytest.raises(DataError, match="no randomness slot"):
        DemoUnlearnConfig(template="my PIN is secret")
