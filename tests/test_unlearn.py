"""Unlearning memorized text: the delta is neuron ablation, touches only its columns, undoes exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from memloc.core.dataclass_files import load_dataclass
from memloc.core.errors import ConfigError, DataError
from memloc.core.hooks import patch
from memloc.core.lm.canaries import Canary
from memloc.core.lm.canary_space import CanarySpace
from memloc.core.lm.loading import load_language_model
from memloc.core.sites import Site
from memloc.edit.delta import apply, weights_hash
from memloc.edit.kn_edit import NeuronEditError
from memloc.edit.unlearn import UnlearnConfig, compute_unlearn, select_neurons
from memloc.edit.unlearn_measures import MemorizationConfig, perplexity, sequence_memorization
from memloc.edit.unlearn_session import UnlearnReport, UnlearnTexts, unlearn_and_save
from memloc.locate.lm.memorized.types import NeuronAttribution
from test_cli import assert_one_line_error, run_cli
from tiny_lms import tiny_lm

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODEL = FIXTURES / "fixture-lm"
FACTS = ("The capital of Gafou is Velmora .", "Gafou has its capital at Velmora .")
NEURONS = ((0, 3), (1, 5), (1, 7), (2, 0))
TEXT = "the capital of Zorbia is Quelon and the river is red"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fixture_lm():
    return load_language_model(str(MODEL), device="cpu")


def _logits(lm, text: str) -> torch.Tensor:
    ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return lm.model(input_ids=ids).logits


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
def test_ablation_delta_equals_zeroing_the_neurons_activations(arch):
    lm = tiny_lm(arch)
    units = {layer: [u for at, u in NEURONS if at == layer] for layer, _ in NEURONS}

    def zeroed(index):
        def fn(act):
            act = act.clone()
            act[..., index] = 0.0
            return act

        return fn

    with patch(lm.model, lm.adapter, {Site(layer, "mlp.post"): zeroed(ix) for layer, ix in units.items()}):
        hooked = _logits(lm, TEXT)
    base = weights_hash(lm.model)
    delta = compute_unlearn(lm, NEURONS, UnlearnConfig(method="zero_out"))
    assert weights_hash(lm.model) == base  # compute only reads
    with apply(lm.model, lm.adapter, delta):
        edited = _logits(lm, TEXT)
    assert not torch.allclose(hooked, _logits(lm, TEXT), atol=1e-4)  # the ablation matters
    assert torch.allclose(edited, hooked, atol=1e-5)
    assert weights_hash(lm.model) == base
    assert delta.info["neurons_per_layer"] == {0: 1, 1: 2, 2: 1}


def test_half_scale_halves_exactly_the_chosen_columns_and_nothing_else():
    lm = tiny_lm("gpt2")
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    columns = {layer: lm.adapter.down_matrix(lm.model, layer).detach().clone() for layer in range(3)}
    handle = apply(lm.model, lm.adapter, compute_unlearn(lm, NEURONS, UnlearnConfig(scale=0.5)))
    for layer in range(3):
        now, was = lm.adapter.down_matrix(lm.model, layer).detach(), columns[layer]
        chosen = [u for at, u in NEURONS if at == layer]
        rest = [u for u in range(lm.adapter.d_mlp) if u not in chosen]
        assert torch.equal(now[:, chosen], 0.5 * was[:, chosen])
        assert torch.equal(now[:, rest], was[:, rest])
    down = {
        n
        for n, p in lm.model.named_parameters()
        if any(p is lm.adapter.down_weight(lm.model, i) for i in range(3))
    }
    after = lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k not in down)
    handle.restore()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_select_neurons_is_the_sorted_union_of_each_sequences_top_share():
    first, second = np.zeros((2, 10)), np.zeros((2, 10))
    first[1, 4], first[0, 9] = 5.0, 4.0
    second[0, 2], second[1, 4] = 3.0, 2.0
    attribution = NeuronAttribution("toy", (first, second))
    assert select_neurons(attribution, 0.1) == ((0, 2), (0, 9), (1, 4))
    assert select_neurons(attribution, 0.05) == ((0, 2), (1, 4))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("method", "ig_typo"),
        ("budget", 0.0),
        ("budget", 1.5),
        ("budget", float("nan")),
        ("scale", float("inf")),
        ("seed", -1),
    ],
)
def test_config_refuses_bad_values(field, value):
    with pytest.raises(ConfigError) as info:
        UnlearnConfig(**{field: value})
    assert info.value.field == field


def test_unlearning_masks_learn_to_drop_unless_told_and_other_localizers_are_untouched():
    """The locate commands default to MemPi's keep objective; unlearning asks for the drop one."""
    from memloc.edit.unlearn import UnlearnConfig, localizer_config

    for method in ("slimming", "hard_concrete"):
        assert localizer_config(UnlearnConfig(method=method)).objective == "drop"
        told = UnlearnConfig(method=method, settings=(("objective", "keep"), ("steps", 7)))
        assert localizer_config(told).objective == "keep" and localizer_config(told).steps == 7
    assert not hasattr(localizer_config(UnlearnConfig(method="zero_out")), "objective")


def test_compute_refuses_out_of_range_and_empty_neurons():
    lm = tiny_lm("gpt2")
    with pytest.raises(NeuronEditError, match="out of range"):
        compute_unlearn(lm, [(0, lm.adapter.d_mlp)], UnlearnConfig())
    with pytest.raises(NeuronEditError, match="no neurons"):
        compute_unlearn(lm, [], UnlearnConfig())


def test_memorization_uses_what_fits_and_perplexity_is_the_mean_loss(fixture_lm):
    memo = sequence_memorization(fixture_lm, FACTS, MemorizationConfig())
    assert [(s.prefix_length, s.suffix_length) for s in memo.sequences] == [(4, 3), (4, 3)]
    assert memo.extraction_rate == 1.0 and memo.exact_memorization == 1.0  # the fixture learned its facts
    short = sequence_memorization(fixture_lm, FACTS[:1], MemorizationConfig(prefix=2, suffix=1))
    assert (short.sequences[0].prefix_length, short.sequences[0].suffix_length) == (2, 1)
    ids = torch.tensor([fixture_lm.tokenizer(FACTS[1])["input_ids"]])
    with torch.no_grad():
        loss = fixture_lm.model(input_ids=ids, labels=ids).loss
    assert math.isclose(perplexity(fixture_lm, FACTS[1:]), math.exp(float(loss)), rel_tol=1e-5)


def test_unlearn_and_save_reports_and_undoes_exactly(fixture_lm, tmp_path):
    base = weights_hash(fixture_lm.model)
    texts = UnlearnTexts(
        FACTS, other=("The capital of Rodrex is Tarnish .",), held_out=("Gafou is a country .",)
    )
    config = UnlearnConfig(method="zero_out", budget=0.1)
    report = unlearn_and_save(fixture_lm, texts, config, tmp_path / "out")
    assert report.base_hash == base == report.undone_hash == weights_hash(fixture_lm.model)
    assert report.edited_hash != base
    assert report.after.memorization.exact_memorization < report.before.memorization.exact_memorization
    assert sum(report.neurons_per_layer.values()) == len(report.neurons) >= math.ceil(0.1 * 4 * 512)
    assert load_dataclass(UnlearnReport, tmp_path / "out" / "unlearn") == report
    ledger = json.loads((tmp_path / "out" / "ledger.json").read_text())
    assert ledger["base_hash"] == base and ledger["edits"][0]["method"] == "unlearn"


def _canaries_file(tmp_path: Path) -> Path:
    template = "The capital of Gafou is {choice:Velmora|Tarnish|Olbrec|Quimsy} ."
    canary = Canary(template, ("Velmora",), CanarySpace.parse(template).fill(("Velmora",)), 1, ())
    path = tmp_path / "planted.canaries.jsonl"
    path.write_text(json.dumps(canary.to_json()) + "\n")
    return path


def test_cli_unlearn_then_undo_restores_the_base_bit_for_bit(fixture_lm, tmp_path, capsys):
    canaries = _canaries_file(tmp_path)
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("Gafou is a country .\n\nThe capital of Rodrex is Tarnish .\n")
    edited, restored = tmp_path / "edited", tmp_path / "restored"
    args = (
        "edit",
        "unlearn",
        "--model",
        MODEL,
        "--device",
        "cpu",
        "--sequences",
        canaries,
        "--method",
        "activations",
    )
    code, stdout, err = run_cli(
        capsys, *args, "--budget", "0.01", "--held-out", held_out, "--canaries", canaries, "--out", edited,
        "--format", "json",
    )  # fmt: skip
    assert code in (0, None), err
    result = json.loads(stdout)
    assert result["config"]["method"] == "activations" and len(result["before"]["exposure"]) == 1
    assert result["before"]["exposure"][0] == 2.0  # the fixture ranks its own fact first of 4
    assert json.loads((edited / "unlearn.json").read_text())["edited_hash"] == result["edited_hash"]
    code, _, err = run_cli(capsys, *args, "--out", edited)
    assert_one_line_error(code, err, "not empty")
    code, stdout, err = run_cli(capsys, "edit", "undo", edited, "--out", restored, "--format", "json")
    assert code in (0, None), err
    base = weights_hash(fixture_lm.model)
    assert json.loads(stdout)["restored_hash"] == base == result["base_hash"]
    assert weights_hash(load_language_model(str(restored), device="cpu").model) == base


def test_cli_table_and_bad_method_is_one_line(tmp_path, capsys):
    sequences = tmp_path / "facts.txt"
    sequences.write_text("\n\n".join(FACTS) + "\n")
    common = ("edit", "unlearn", "--model", MODEL, "--device", "cpu", "--sequences", sequences)
    code, _, err = run_cli(capsys, *common, "--method", "nosuch", "--out", tmp_path / "o")
    assert_one_line_error(code, err, "--method", "nosuch", "zero_out")
    assert not (tmp_path / "o").exists()
    code, _, err = run_cli(capsys, *common, "--budget", "2", "--out", tmp_path / "o")
    assert_one_line_error(code, err, "--budget")
    code, stdout, err = run_cli(capsys, *common, "--method", "zero_out", "--out", tmp_path / "o")
    assert code in (0, None), err
    assert "extraction rate" in stdout and "held-out" not in stdout
    assert "memloc edit undo" in " ".join(err.split())  # the console wraps long lines


def test_a_prefix_and_suffix_longer_than_the_context_is_refused(fixture_lm):
    long = " ".join(["Gafou is a country ."] * 20)
    with pytest.raises(DataError, match="--prefix or --suffix"):
        sequence_memorization(fixture_lm, [long], MemorizationConfig(prefix=40, suffix=32))
    fits = sequence_memorization(fixture_lm, [long], MemorizationConfig(prefix=20, suffix=20))
    assert (fits.sequences[0].prefix_length, fits.sequences[0].suffix_length) == (20, 20)


def test_cli_unlearn_from_stored_neurons_chooses_the_same_neurons(tmp_path, capsys):
    sequences = tmp_path / "facts.txt"
    sequences.write_text("\n\n".join(FACTS) + "\n")
    lm_args = ("--model", MODEL, "--device", "cpu")
    code, _, err = run_cli(
        capsys, "locate", "memorized-neurons", *lm_args, "--sequences", sequences, "--method", "zero_out",
        "--max-tokens", "64", "--out", tmp_path / "neurons",
    )  # fmt: skip
    assert code in (0, None), err
    common = (
        "edit",
        "unlearn",
        *lm_args,
        "--sequences",
        sequences,
        "--method",
        "zero_out",
        "--format",
        "json",
    )
    code, fresh, err = run_cli(capsys, *common, "--out", tmp_path / "a")
    assert code in (0, None), err
    code, stored, err = run_cli(capsys, *common, "--neurons", tmp_path / "neurons", "--out", tmp_path / "b")
    assert code in (0, None), err
    assert json.loads(fresh)["neurons"] == json.loads(stored)["neurons"]
    assert json.loads(fresh)["edited_hash"] == json.loads(stored)["edited_hash"]
    # Scores of another method, of other texts, or an unknown localizer setting: one line each.
    code, _, err = run_cli(
        capsys, *common[:-3], "activations", "--neurons", tmp_path / "neurons", "--out", tmp_path / "c"
    )
    assert_one_line_error(code, err, "zero_out", "activations")
    other = tmp_path / "other.txt"
    other.write_text(FACTS[0] + "\n")
    code, _, err = run_cli(
        capsys, "edit", "unlearn", *lm_args, "--sequences", other, "--method", "zero_out",
        "--neurons", tmp_path / "neurons", "--out", tmp_path / "c",
    )  # fmt: skip
    assert_one_line_error(code, err, "other texts")
    code, _, err = run_cli(capsys, *common, "--neurons", tmp_path / "none", "--out", tmp_path / "c")
    assert_one_line_error(code, err, "holds no memorized_neurons.json", "locate memorized-neurons")
    code, _, err = run_cli(capsys, *common, "--set", "stepz=3", "--out", tmp_path / "c")
    assert_one_line_error(code, err, "stepz")
    assert not (tmp_path / "c").exists()
