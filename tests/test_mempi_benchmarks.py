"""MemPi's INJ and DEL benchmarks (Chang et al. 2024) on the fixture LM (4 layers x 512 neurons)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from memloc.core.dataclass_files import load_dataclass
from memloc.core.errors import ConfigError, DataError
from memloc.core.lm.loading import load_language_model
from memloc.locate.lm.memorized.accuracy import token_accuracy
from memloc.locate.lm.memorized.activations import ActivationsConfig, localize_activations
from memloc.locate.lm.memorized.drop import DelConfig, DelResult, del_row, run_del
from memloc.locate.lm.memorized.inject import (
    InjectConfig,
    InjResult,
    PlantedNeurons,
    inj_recall,
    inject_sequences,
    run_inj,
)
from memloc.locate.lm.memorized.random_baseline import RandomConfig, localize_random
from memloc.locate.lm.memorized.types import SequenceBatch, token_losses
from test_cli import assert_one_line_error, run_cli

from tests.tiny_lms import tiny_lm

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODEL = FIXTURES / "fixture-lm"
# 2% of the 2048 neurons (41 per sequence) plant a new 6-token sequence in ~30 Adam steps.
INJECT = InjectConfig(ratio=0.02, lr=0.05, max_steps=300, seed=0)
BUDGET = 0.02


@pytest.fixture(scope="module")
def lm():
    return load_language_model(str(MODEL), device="cpu")


@pytest.fixture(scope="module")
def new_sequences(lm):
    """Seeded random token strings the fixture LM has never seen (ids 3.. skip the specials)."""
    rng = np.random.default_rng(0)
    vocab = lm.adapter.unembedding(lm.model).shape[0]
    return tuple(tuple(int(t) for t in rng.integers(3, vocab, 6)) for _ in range(3))


@pytest.fixture(scope="module")
def injection(lm, new_sequences):
    return inject_sequences(lm.model, lm.adapter, new_sequences, INJECT)


def test_injection_memorizes_and_changes_only_the_planted_columns(lm, new_sequences, injection):
    assert token_accuracy(lm.model, lm.adapter, new_sequences).max() < 0.5  # new to the model
    assert injection.memorized and injection.accuracy == (1.0, 1.0, 1.0)
    assert 0 < injection.steps < INJECT.max_steps
    planted = {n for chosen in injection.planted.neurons for n in chosen}
    assert all(len(chosen) == 41 for chosen in injection.planted.neurons)
    before, after = lm.model.state_dict(), injection.model.state_dict()
    downs = {
        lm.adapter.down_weight(lm.model, layer).data_ptr(): layer for layer in range(lm.adapter.n_layers)
    }
    for name, weight in lm.model.named_parameters():
        if weight.data_ptr() not in downs:
            assert torch.equal(before[name], after[name]), name
    for layer in range(lm.adapter.n_layers):
        diff = lm.adapter.down_matrix(injection.model, layer) - lm.adapter.down_matrix(lm.model, layer)
        changed = {(layer, int(u)) for u in torch.nonzero(diff.abs().sum(0)).flatten()}
        assert changed <= planted
        assert changed == {n for n in planted if n[0] == layer}


def test_planted_set_recalls_itself_and_random_is_near_chance(lm, new_sequences, injection):
    planted = injection.planted
    assert inj_recall(planted.as_attribution(), planted, BUDGET) == 1.0
    batch = SequenceBatch(new_sequences)
    chance = inj_recall(localize_random(lm.model, lm.adapter, batch, RandomConfig(seed=0)), planted, BUDGET)
    assert chance < 0.2


def test_inj_ranks_zero_out_above_random_and_is_seeded(lm, new_sequences, tmp_path):
    args = (lm.model, lm.adapter, new_sequences, (), ["zero_out"], {}, BUDGET, INJECT)
    result = run_inj(*args)
    again = run_inj(*args)
    assert [r.method for r in result.rows] == ["zero_out", "random"]
    zero_out, random = result.rows
    assert zero_out.recall > random.recall + 0.2
    assert result == again
    from memloc.locate.lm.memorized.benchmark_files import write_inj

    paths = write_inj(result, tmp_path)
    assert {p.name for p in paths} == {"inj.json", "inj.npz", "inj.md", "inj_recall.png"}
    assert load_dataclass(InjResult, tmp_path / "inj") == result


def test_slimming_and_hard_concrete_recall_the_planted_neurons_with_mempis_objective(
    lm, new_sequences, injection
):
    """MemPi's masks keep the fewest neurons a sequence needs, and in INJ those are the planted ones.
    The drop objective (raise the sequence's loss), their default before, recalled 0.07 of them with
    Slimming and 0.45 with Hard Concrete."""
    from memloc.locate.lm.memorized.hard_concrete import HardConcreteConfig, localize_hard_concrete
    from memloc.locate.lm.memorized.slimming import SlimmingConfig, localize_slimming

    batch = SequenceBatch(new_sequences)
    planted = injection.planted
    slim = localize_slimming(injection.model, lm.adapter, batch, SlimmingConfig(steps=40))
    concrete = localize_hard_concrete(injection.model, lm.adapter, batch, HardConcreteConfig(steps=40))
    recalls = [inj_recall(found, planted, BUDGET) for found in (slim, concrete)]
    assert min(recalls) > 0.45, recalls


def test_a_loss_stop_trains_past_greedy_reproduction(lm, new_sequences, injection):
    """MemPi's injection runs until the loss is small, not just until the argmax is right."""
    deeper = inject_sequences(lm.model, lm.adapter, new_sequences, replace(INJECT, stop_loss=1.0))
    ids = torch.tensor(new_sequences)
    with torch.no_grad():
        shallow_loss = token_losses(injection.model(input_ids=ids).logits, ids)
        deep_loss = token_losses(deeper.model(input_ids=ids).logits, ids)
    assert shallow_loss.min() > 1.0  # greedy reproduction alone stops well above the loss asked for
    assert deep_loss.max() < 1.0 and deeper.steps > injection.steps
    assert deeper.planted == injection.planted and deeper.memorized


def test_separate_injection_localizes_each_sequence_in_its_own_model(lm, new_sequences, injection):
    apart = run_inj(
        lm.model, lm.adapter, new_sequences, (), ["activations"], {}, BUDGET, replace(INJECT, separate=True)
    )
    assert apart.planted == injection.planted  # the same draw as one model for all
    assert [r.method for r in apart.rows] == ["activations", "random"] and len(apart.accuracy) == 3
    for s, sequence in enumerate(new_sequences):
        own = PlantedNeurons(
            (injection.planted.neurons[s],), injection.planted.n_layers, injection.planted.d_mlp
        )
        alone = inject_sequences(lm.model, lm.adapter, (sequence,), INJECT, planted=own)
        for layer in range(lm.adapter.n_layers):
            diff = lm.adapter.down_matrix(alone.model, layer) - lm.adapter.down_matrix(lm.model, layer)
            changed = {(layer, int(u)) for u in torch.nonzero(diff.abs().sum(0)).flatten()}
            assert changed == {n for n in own.neurons[0] if n[0] == layer}
        found = localize_activations(alone.model, lm.adapter, SequenceBatch((sequence,)), ActivationsConfig())
        assert apart.rows[0].per_sequence[s] == inj_recall(found, own, BUDGET)
    # Each sequence's random draw is its own, as in one model for all (not the first's, repeated).
    together = run_inj(lm.model, lm.adapter, new_sequences, (), [], {}, BUDGET, INJECT)
    assert apart.rows[-1].per_sequence == together.rows[-1].per_sequence
    drawn = localize_random(lm.model, lm.adapter, SequenceBatch(new_sequences), RandomConfig(seed=0))
    assert len({s.tobytes() for s in drawn.scores}) == len(new_sequences)


def test_del_drops_the_target_more_than_the_others(lm, new_sequences, injection):
    plain = tuple(tuple(lm.tokenizer(t)["input_ids"]) for t in ("Gafou is a country .",))
    model, adapter = injection.model, lm.adapter
    result = run_del(model, adapter, new_sequences, (), plain, [], {}, DelConfig(budget=BUDGET))
    assert [r.method for r in result.rows] == ["random"]
    # The planted sets as an oracle localizer: dropping them should undo each injection.
    oracle = del_row(model, adapter, injection.planted.as_attribution(), new_sequences, plain, result.config)
    assert oracle.target_drop > 0.5 > oracle.other_drop
    assert oracle.target_drop > result.rows[0].target_drop
    one = run_del(model, adapter, new_sequences, (), plain, [], {}, DelConfig(budget=BUDGET, batch_size=1))
    assert one.rows == result.rows and one.accuracy == result.accuracy  # batching does not change a result


def test_configs_and_inputs_are_refused():
    for bad in ({"ratio": 0.0}, {"ratio": 1.5}, {"lr": float("nan")}, {"max_steps": 0}, {"seed": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            InjectConfig(**bad)
    for bad in ({"budget": 0.0}, {"budget": 2.0}, {"batch_size": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            DelConfig(**bad)
    for bad in ({"seed": -1}, {"first": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            RandomConfig(**bad)


def test_runners_refuse_bad_inputs(lm, new_sequences):
    with pytest.raises(DataError, match="unknown localizer"):
        run_inj(lm.model, lm.adapter, new_sequences, (), ["nope"], {}, BUDGET, INJECT)
    with pytest.raises(DataError, match="budget"):
        run_inj(lm.model, lm.adapter, new_sequences, (), ["zero_out"], {}, 0.0, INJECT)
    for separate in (False, True):  # one model per sequence must refuse no sequences too
        with pytest.raises(DataError, match="at least one sequence"):
            run_inj(
                lm.model, lm.adapter, (), (), ["activations"], {}, BUDGET, replace(INJECT, separate=separate)
            )
    with pytest.raises(DataError, match="at least 2 memorized"):
        run_del(lm.model, lm.adapter, new_sequences[:1], (), new_sequences, [], {}, DelConfig())
    with pytest.raises(DataError, match="ZeroOutConfig"):
        run_del(
            lm.model, lm.adapter, new_sequences, (), new_sequences, ["zero_out"], {"zero_out": 3}, DelConfig()
        )


def test_cli_inj_and_del_smoke(tmp_path, capsys):
    seqs, keep = tmp_path / "seqs.txt", tmp_path / "keep.txt"
    seqs.write_text("Velmora blue winter Gafou country\n\nlast capital is a blue\n")
    keep.write_text("Gafou is a country .\n\nthe capital of Velmora is blue\n")
    common = ("--model", MODEL, "--device", "cpu", "--methods", "activations", "--budget", "0.02")
    code, _, err = run_cli(
        capsys, "locate", "inj", *common, "--sequences", seqs, "--other", keep, "--ratio", "0.02",
        "--out", tmp_path / "inj",
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "inj" / "inj_recall.png").stat().st_size > 0
    assert "random" in (tmp_path / "inj" / "inj.md").read_text()
    code, _, err = run_cli(
        capsys, "locate", "inj", *common, "--sequences", seqs, "--ratio", "0.02", "--separate",
        "--stop-loss", "2.0", "--out", tmp_path / "apart",
    )  # fmt: skip
    assert code == 0, err
    apart = load_dataclass(InjResult, tmp_path / "apart" / "inj")
    assert apart.config.separate and apart.config.stop_loss == 2.0 and len(apart.accuracy) == 2
    code, _, err = run_cli(capsys, "locate", "inj", *common, "--sequences", seqs, "--stop-loss", "0")
    assert_one_line_error(code, err, "stop_loss")
    code, out, err = run_cli(
        capsys, "locate", "del", *common, "--sequences", keep, "--other", seqs, "--plain", seqs,
        "--out", tmp_path / "del", "--format", "json",
    )  # fmt: skip
    assert code == 0, err
    assert '"target"' in out and (tmp_path / "del" / "del_drops.png").exists()
    assert load_dataclass(DelResult, tmp_path / "del" / "del").rows[-1].method == "random"
    code, _, err = run_cli(capsys, "locate", "del", *common[:4], "--sequences", keep, "--other", seqs,
                           "--plain", seqs, "--methods", "nope")  # fmt: skip
    assert_one_line_error(code, err, "nope")
    for bad, needle in (
        ("activations.stepz=3", "stepz"),
        ("steps=3", "ig.steps"),
        ("ig.steps=3", "ig.steps"),
    ):
        code, _, err = run_cli(capsys, "locate", "del", *common, "--sequences", keep, "--other", seqs,
                               "--plain", seqs, "--set", bad, "--out", tmp_path / "bad")  # fmt: skip
        assert_one_line_error(code, err, needle)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gptj"])
def test_injection_touches_only_planted_columns_of_every_architecture(arch):
    tiny = tiny_lm(arch)
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    config = InjectConfig(ratio=0.05, max_steps=3, seed=1)
    injection = inject_sequences(tiny.model, tiny.adapter, ((5, 9, 12, 3), (7, 8, 2)), config)
    assert 1 <= injection.steps <= 3 and all(
        torch.equal(before[k], v) for k, v in tiny.model.state_dict().items()
    )
    planted = {n for chosen in injection.planted.neurons for n in chosen}
    for layer in range(tiny.adapter.n_layers):
        diff = tiny.adapter.down_matrix(injection.model, layer) - tiny.adapter.down_matrix(tiny.model, layer)
        changed = {(layer, int(u)) for u in torch.nonzero(diff.abs().sum(0)).flatten()}
        assert changed == {n for n in planted if n[0] == layer}
