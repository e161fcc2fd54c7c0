"""Memorized-sequence localizers on a hand-set toy where one neuron carries the sequence."""

from __future__ import annotations

import pytest
import torch
from memloc.core.errors import ConfigError, DataError
from memloc.locate.lm.memorized.activations import ActivationsConfig, localize_activations
from memloc.locate.lm.memorized.hard_concrete import HardConcreteConfig, localize_hard_concrete
from memloc.locate.lm.memorized.integrated_gradients import IGConfig, localize_integrated_gradients
from memloc.locate.lm.memorized.slimming import SlimmingConfig, localize_slimming
from memloc.locate.lm.memorized.types import SequenceBatch
from memloc.locate.lm.memorized.zero_out import ZeroOutConfig, localize_zero_out

from tests.tiny_lms import tiny_lm

PLANTED = (1, 5)


@pytest.fixture(scope="module")
def toy():
    """Tiny llama whose MLPs are zeroed but for one neuron that drives the sequence's tokens."""
    lm = tiny_lm("llama")
    model, adapter = lm.model, lm.adapter
    seq = tuple(lm.tokenizer("the capital of Zorbia is Quelon")["input_ids"])
    other = tuple(lm.tokenizer("a red river in Oslo")["input_ids"])
    with torch.no_grad():
        for layer in range(adapter.n_layers):
            adapter.down_matrix(model, layer).zero_()
        layer, unit = PLANTED
        target = adapter.unembedding(model)[list(seq[1:])].mean(0)
        adapter.down_matrix(model, layer)[:, unit] = 20 * target / target.norm()
        block = adapter.blocks(model)[layer].mlp
        block.gate_proj.weight[unit] *= 30
        block.up_proj.weight[unit] *= 30
    return lm, SequenceBatch(sequences=(seq,), other=(other,))


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "run",
    [
        lambda lm, b, n: localize_zero_out(lm.model, lm.adapter, b, ZeroOutConfig(batch_size=n)),
        lambda lm, b, n: localize_activations(lm.model, lm.adapter, b, ActivationsConfig(batch_size=n)),
        lambda lm, b, n: localize_integrated_gradients(
            lm.model, lm.adapter, b, IGConfig(steps=8, batch_size=n)
        ),
        # The toy's loss gradients are ~1e-5, so the reference lambda of 1000 would pin the mask at 1.
        lambda lm, b, n: localize_slimming(
            lm.model, lm.adapter, b, SlimmingConfig(steps=20, penalty=1e-4, batch_size=n)
        ),
        lambda lm, b, n: localize_hard_concrete(
            lm.model, lm.adapter, b, HardConcreteConfig(steps=30, penalty=1e-4, init=1.0, batch_size=n)
        ),
        # The drop objective is the one that reads the other text in chunks of batch_size.
        lambda lm, b, n: localize_slimming(
            lm.model, lm.adapter, b, SlimmingConfig(steps=20, penalty=1e-4, batch_size=n, objective="drop")
        ),
        lambda lm, b, n: localize_hard_concrete(
            lm.model,
            lm.adapter,
            b,
            HardConcreteConfig(steps=30, penalty=1e-4, init=1.0, batch_size=n, objective="drop"),
        ),
    ],
    ids=["zero_out", "activations", "ig", "slimming", "hard_concrete", "slimming_drop", "hard_concrete_drop"],
)
def test_planted_neuron_ranks_first_and_batch_size_does_not_matter(toy, run):
    lm, batch = toy
    before = _weights(lm.model)
    one, many = run(lm, batch, 1), run(lm, batch, 64)
    assert one.top_neurons(0, 1e-9)[0] == PLANTED
    assert abs(one.scores[0] - many.scores[0]).max() < 1e-5
    after = lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in lm.model.parameters())


def test_counts_and_overlap(toy):
    lm, batch = toy
    two = SequenceBatch(sequences=(batch.sequences[0], batch.sequences[0]), other=batch.other)
    result = localize_zero_out(lm.model, lm.adapter, two, ZeroOutConfig())
    assert sum(result.per_layer_counts(0, 0.05).values()) == len(result.top_neurons(0, 0.05))
    assert result.overlap(0.05)[0, 1] == 1.0


def test_bad_config_is_one_line():
    with pytest.raises(ConfigError, match="batch_size"):
        ZeroOutConfig(batch_size=0)


def test_registry_refuses_an_unknown_localizer_with_the_known_ones() -> None:
    from memloc.locate.lm.memorized.registry import LOCALIZERS, localizer

    assert localizer("zero_out").run is LOCALIZERS["zero_out"].run
    with pytest.raises(DataError, match="zero_out, activations"):
        localizer("nope")


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_ig_is_complete_per_layer(kind) -> None:
    """Completeness: a layer's scores sum to log p(x) minus log p(x) with that layer's mlp.post zeroed."""
    from memloc.core.hooks import patch
    from memloc.core.sites import Site

    lm = tiny_lm(kind)
    ids = tuple(lm.tokenizer("memorized text is here again")["input_ids"])
    batch = SequenceBatch(sequences=(ids,))
    result = localize_integrated_gradients(lm.model, lm.adapter, batch, IGConfig(steps=400, batch_size=512))
    x = torch.tensor([ids])

    def loglik() -> float:
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(input_ids=x).logits[0, :-1].double(), -1)
        return float(logp.gather(-1, x[0, 1:, None]).sum())

    clean = loglik()
    for layer in range(lm.adapter.n_layers):
        with patch(lm.model, lm.adapter, {Site(layer, "mlp.post"): torch.zeros_like}):
            zeroed = loglik()
        gap = clean - zeroed
        assert abs(result.scores[0][layer].sum() - gap) < 0.02 * abs(gap) + 1e-3


def test_hard_concrete_ranks_by_the_unclamped_gate_parameter() -> None:
    """With gates still fully open (init 3, few steps) a clamped score would tie every neuron at 0."""
    import numpy as np

    lm = tiny_lm("llama")
    ids = tuple(lm.tokenizer("the capital of Zorbia is Quelon")["input_ids"])
    batch = SequenceBatch(sequences=(ids,))
    config = HardConcreteConfig(steps=3, penalty=1e-4, lr=1e-3)
    score = localize_hard_concrete(lm.model, lm.adapter, batch, config).scores[0]
    assert len(np.unique(score)) > 0.2 * score.size  # the clamped gate gave one value


@pytest.mark.parametrize("name", ["zero_out", "activations", "ig", "slimming", "hard_concrete"])
def test_every_localizer_reports_its_steps_without_changing_its_scores(toy, name):
    from memloc.locate.lm.memorized.registry import localizer, make_config

    lm, batch = toy
    two = SequenceBatch(sequences=batch.sequences * 2, other=batch.other)
    spec = localizer(name)
    config = make_config(name, (("steps", 5),) if name in ("ig", "slimming", "hard_concrete") else ())
    seen: list[tuple[int, int, str]] = []
    quiet = spec.run(lm.model, lm.adapter, two, config)
    told = spec.run(lm.model, lm.adapter, two, config, progress=lambda *call: seen.append(call))
    for a, b in zip(quiet.scores, told.scores, strict=True):
        assert (a == b).all()
    done = [d for d, _, _ in seen]
    assert done == sorted(done) and seen[-1][0] == seen[-1][1] >= 1
    if name in ("slimming", "hard_concrete"):
        assert seen[-1][1] == 2 * config.steps  # two sequences' optimisation steps
