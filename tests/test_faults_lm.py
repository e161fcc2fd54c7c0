"""Faults in language models: non-finite weights and activations, repeated subjects, quiet phases.

Every case damages a real model folder (a copy of fixtures/fixture-lm) or a tiny LM and
checks that memloc names the problem in one line before any method runs on it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from memloc.core.errors import MemlocError
from safetensors.torch import load_file, save_file
from test_cli import assert_one_line_error, run_cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODEL = FIXTURES / "fixture-lm"
FACTS = FIXTURES / "fixture-facts.json"
DOWN = "transformer.h.1.mlp.c_proj.weight"


def _damaged_copy(tmp_path: Path, name: str, damage) -> Path:
    """A copy of the fixture LM whose tensor ``name`` was passed through ``damage``."""
    folder = tmp_path / "damaged-lm"
    shutil.copytree(MODEL, folder)
    tensors = load_file(folder / "model.safetensors")
    tensors[name] = damage(tensors[name].clone())
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def _one_nan(weight: torch.Tensor) -> torch.Tensor:
    weight.view(-1)[7] = float("nan")
    return weight


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory) -> Path:
    return _damaged_copy(tmp_path_factory.mktemp("nan"), DOWN, _one_nan)


@pytest.fixture(scope="module")
def overflowing_model(tmp_path_factory) -> Path:
    """Finite weights whose block-1 MLP output overflows float32 to inf."""
    return _damaged_copy(tmp_path_factory.mktemp("inf"), DOWN, lambda w: torch.full_like(w, 3e38))


NAN_COMMANDS = {
    "trace": ("locate", "trace", "--limit", "1", "--samples", "2", "--window", "2"),
    "knowledge-neurons": ("locate", "knowledge-neurons", "--limit", "1", "--steps", "2"),
    "suppress": ("locate", "suppress", "--limit", "1", "--steps", "2", "--controls", "1"),
    "edit-eval-rome": (
        "edit", "eval", "--method", "rome", "--layers", "1", "--limit", "1", "--samples", "8",
        "--fluency-tokens", "2",
    ),
}  # fmt: skip


@pytest.mark.parametrize("command", list(NAN_COMMANDS))
def test_a_nan_weight_is_named_before_any_method_runs(nan_model, tmp_path, capsys, command):
    args = (*NAN_COMMANDS[command], "--model", nan_model, "--facts", FACTS, "--device", "cpu")
    code, _, err = run_cli(capsys, *args, "--out", tmp_path / "out")
    assert code == 1
    assert_one_line_error(code, err, DOWN, "1 NaN")


def test_the_weight_check_names_counts_and_skips_integer_buffers():
    from memloc.core.finite import check_finite_weights
    from tiny_lms import tiny_lm

    lm = tiny_lm("llama")
    check_finite_weights(lm.model)  # a healthy model passes
    weight = lm.model.model.layers[2].mlp.down_proj.weight
    weight.data[0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    with pytest.raises(
        MemlocError,
        match=r"model.layers.2.mlp.down_proj.weight holds 1 NaN and 2 inf of 1,536 values in tiny",
    ):
        check_finite_weights(lm.model, source="tiny")


def test_an_lm_bundle_built_from_a_damaged_model_is_refused():
    from memloc.core.lm.model import LM
    from tiny_lms import tiny_lm

    lm = tiny_lm("gpt2")
    lm.model.transformer.h[0].ln_1.weight.data[3] = float("nan")
    with pytest.raises(MemlocError, match=r"transformer.h.0.ln_1.weight holds 1 NaN"):
        LM(lm.model, lm.tokenizer, lm.adapter)


def test_the_weight_check_is_cheap_on_a_large_model():
    import time

    from memloc.core.finite import check_finite_weights

    # About SmolLM2-135M's parameter count, in float32.
    model = torch.nn.Sequential(*[torch.nn.Linear(1536, 1536) for _ in range(57)])
    start = time.perf_counter()
    check_finite_weights(model)
    assert time.perf_counter() - start < 1.0


def test_an_overflowing_activation_names_its_first_layer(overflowing_model, tmp_path, capsys):
    args = (*NAN_COMMANDS["trace"], "--model", overflowing_model, "--facts", FACTS, "--device", "cpu")
    code, _, err = run_cli(capsys, *args, "--out", tmp_path / "o")
    assert code == 1
    assert_one_line_error(code, err, "blocks.1.mlp.out", "non-finite")


@pytest.mark.parametrize("method", ["neurons", "suppress", "rome"])
def test_every_method_checks_its_clean_pass(overflowing_model, method):
    from memloc.core.lm.facts import load_facts
    from memloc.core.lm.loading import load_language_model

    lm = load_language_model(str(overflowing_model), device="cpu")
    fact = load_facts(FACTS, limit=1)[0]
    with pytest.raises(MemlocError, match=r"blocks.1.mlp.out"):
        if method == "neurons":
            from memloc.locate.lm.knowledge_neurons import KNConfig, knowledge_neurons

            knowledge_neurons(lm, [fact], KNConfig(steps=2))
        elif method == "suppress":
            from memloc.locate.lm.interventions import intervene

            intervene(lm, [fact], {fact.case_id: []})
        else:
            from memloc.edit.rome import RomeConfig, compute_rome

            compute_rome(lm, fact, torch.eye(lm.adapter.d_mlp), RomeConfig(layer=1), templates=["{}"])


def test_a_singular_second_moment_is_one_line_naming_the_layer():
    from memloc.edit.rome import rank_one_update

    weight = torch.randn(4, 6)
    nan_c = torch.full((6, 6), float("nan"), dtype=torch.float64)
    with pytest.raises(MemlocError, match=r"layer 3.*(singular|NaN)"):
        rank_one_update(weight, None, nan_c, torch.ones(6), torch.ones(4), layer=3)
    with pytest.raises(MemlocError, match=r"layer 3.*singular"):
        rank_one_update(weight, None, torch.zeros(6, 6).double(), torch.ones(6), torch.ones(4), layer=3)


def test_a_nan_memit_system_names_the_layer():
    from memloc.edit.memit import MemitError, solve_layer_update

    keys, residuals = torch.randn(6, 2), torch.randn(4, 2)
    nan_c = torch.full((6, 6), float("nan"))
    with pytest.raises(MemitError, match=r"layer 2 holds NaN or inf"):
        solve_layer_update(keys, residuals, nan_c, 1.0, layer=2)


def test_nan_key_statistics_name_the_layer(tmp_path):
    from memloc.edit.stats import StatsConfig, key_statistics
    from tiny_lms import tiny_lm

    lm = tiny_lm("gpt2")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the city of Paris\nthe river Nile\n")
    # Finite weights whose MLP output overflows: the keys above it are inf.
    lm.model.transformer.h[0].mlp.c_proj.weight.data.fill_(3e38)
    with pytest.raises(MemlocError, match=r"key statistics of layer 2 hold NaN or inf"):
        key_statistics(lm, 2, StatsConfig(corpus=str(corpus), samples=2), cache_dir=tmp_path / "stats")


def test_a_classifier_checkpoint_with_a_nan_is_named(digits_run, tmp_path, capsys):
    from memloc.core.classifier.runs import RunFolder

    run = RunFolder(tmp_path / "run")
    shutil.copytree(digits_run.root, run.root)
    last = run.checkpoint(run.epochs()[-1])
    tensors = load_file(last)
    name = next(k for k in tensors if k.endswith("weight"))
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, last)
    with pytest.raises(MemlocError, match=rf"{name} holds 1 NaN .* in {last}"):
        run.load_model()
    code, _, err = run_cli(capsys, "models", "inspect", run.root)
    assert_one_line_error(code, err, name, "1 NaN")


# --- a subject that appears twice: the "{}" placeholder decides ----------------------------

TWICE = "the {} is in Paris like every Eiffel tower"


def _twice_fact():
    from memloc.core.lm.facts import Fact

    return Fact("twice", TWICE, "Eiffel tower", "red", target_new="blue")


def test_encode_takes_the_placeholders_mention():
    from memloc.core.lm.model import encode
    from tiny_lms import tiny_tokenizer

    tok = tiny_tokenizer()
    enc = encode(tok, TWICE, "Eiffel tower", "red")
    assert enc.ids == encode(tok, TWICE.format("Eiffel tower")).ids
    assert enc.subject == (1, 3)  # the first mention; the last one is (8, 10)
    assert encode(tok, "the city {}", "Eiffel tower").subject == (2, 4)


def test_tracing_and_edits_act_on_the_placeholders_mention():
    from memloc.edit.memit import _subject_prompts
    from memloc.edit.targets import rewrite_batch
    from memloc.locate.lm.tracing import TraceConfig, trace_fact
    from tiny_lms import tiny_lm

    lm, fact = tiny_lm("gpt2"), _twice_fact()
    traced = trace_fact(lm, fact, TraceConfig(samples=2, window=1, kinds=("mlp",), tokens=(2,)))
    assert traced.subject == (1, 3)
    batch = rewrite_batch(lm, fact, ["{}", "the city of Rome {}"], "{} is a")
    assert batch.subject_last.tolist() == [2, 6, 1]
    assert [last for _, last in _subject_prompts(lm, [fact], ["{}", "a {}"])] == [2, 3]


# --- long phases report progress -------------------------------------------------------------


def test_generation_reports_every_token_and_keeps_its_text():
    from memloc.edit.evaluate import generate
    from tiny_lms import tiny_lm

    lm, calls = tiny_lm("llama"), []
    prompts = ["the city of", "Paris is the capital"]
    texts = generate(lm, prompts, 5, progress=lambda *call: calls.append(call))
    assert texts == generate(lm, prompts, 5)
    assert calls == [(i, 5, "tokens") for i in range(1, 6)]


def test_tracing_reports_the_cells_inside_each_fact():
    from memloc.core.lm.facts import Fact
    from memloc.locate.lm.tracing import TraceConfig, trace_facts
    from tiny_lms import tiny_lm

    facts = [Fact("a", "the capital of {} is", "Rome", "Paris"), Fact("b", "{} is in", "Paris", "Rome")]
    calls = []
    trace_facts(
        tiny_lm("gpt2"), facts, TraceConfig(samples=2, kinds=("mlp",)), progress=lambda *c: calls.append(c)
    )
    inner = [c for c in calls if "cells" in c[2]]
    assert inner and {c[:2] for c in inner} == {(0, 2), (1, 2)}  # the count stays the fact's
    assert calls[-1] == (2, 2, "fact b")


def test_the_demo_edit_reports_every_phase(tmp_path, monkeypatch):
    from memloc.core.lm.facts import load_facts
    from memloc.core.lm.loading import load_language_model
    from memloc.edit.demo_edit import edit_and_undo
    from memloc.edit.monitor import MonitorConfig

    monkeypatch.setenv("MEMLOC_CACHE", str(tmp_path))
    lm = load_language_model(str(MODEL), device="cpu")
    fact = load_facts(FACTS, limit=1)[0]
    seen: list[str] = []
    monitor = MonitorConfig(max_update_ratio=None, tokens=3)
    shown = edit_and_undo(
        lm,
        fact,
        stats_samples=8,
        tokens=2,
        monitor=monitor,
        trace_samples=2,
        progress=lambda *c: seen.append(c[2]),
    )
    assert shown.undone_bit_exact
    for phase in (
        "before the edit: tokens",
        "tracing for the edit layer: cells",
        "key statistics",
        "context templates",
        "collapse monitor baseline: tokens",
        "ROME, fact 0: target steps",
        "collapse monitor, after the edit: tokens",
        "after the edit: tokens",
    ):
        assert any(phase in what for what in seen), (phase, sorted(set(seen)))
