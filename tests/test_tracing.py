"""Causal tracing: exact restoration, seeded noise, fast path = plain reference, figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from memloc.core.errors import MemlocError
from memloc.core.lm.facts import Fact
from memloc.core.sites import Site
from memloc.locate.lm.tracing import (
    FactTrace,
    TraceConfig,
    TraceReport,
    average_best_layer,
    restored_prob,
    trace_fact,
)
from memloc.locate.lm.tracing_figures import token_labels, trace_heatmaps
from tiny_lms import ARCHITECTURES, tiny_lm

PROMPT = "the {} is located in"
SUBJECT = "Eiffel tower"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The tiny models are too small to gain from threads; on a busy machine they only contend.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sharp_lm(arch: str):
    """A tiny random LM with larger weights, so that corrupting the subject matters."""
    lm = tiny_lm(arch)
    with torch.no_grad():
        for p in lm.model.parameters():
            if p.dim() >= 2:
                p.mul_(5.0)
    return lm


def clean_top(lm) -> tuple[Fact, float]:
    """A fact whose target is the model's own top next token, and that token's probability."""
    ids = torch.tensor([lm.tokenizer(PROMPT.format(SUBJECT))["input_ids"]])
    with torch.no_grad():
        probs = torch.softmax(lm.model(ids).logits[0, -1], -1)
    top = int(probs.argmax())
    return Fact("1", PROMPT, SUBJECT, lm.tokenizer.decode([top])), float(probs[top])


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_restoring_every_token_recovers_the_clean_probability(arch):
    lm = sharp_lm(arch)
    fact, clean = clean_top(lm)
    config = TraceConfig(samples=4, kinds=("hidden",))
    result = trace_fact(lm, fact, config)
    everywhere = list(range(len(result.tokens)))
    corrupted = restored_prob(lm, fact, {}, config)
    assert abs(clean - corrupted) > 1e-3 * clean, (
        "the noise must change the answer for this test to mean anything"
    )
    assert restored_prob(lm, fact, {Site(0, "resid.pre"): everywhere}, config) == pytest.approx(
        clean, rel=1e-5
    )
    for layer in range(lm.n_layers):
        site = Site(layer, "resid.post")
        assert restored_prob(lm, fact, {site: everywhere}, config) == pytest.approx(clean, rel=1e-5)
    # Leaving one subject token corrupted does not give the clean run back.
    partly = [t for t in everywhere if t != result.last_subject]
    assert restored_prob(lm, fact, {Site(0, "resid.pre"): partly}, config) != pytest.approx(clean, rel=1e-4)

    assert result.clean_prob == pytest.approx(clean, rel=1e-5)
    assert result.corrupted_prob == pytest.approx(corrupted, rel=1e-5)
    # The last block's output at the last token is all the prediction reads.
    assert result.grids["hidden"][-1, -1] == pytest.approx(clean, rel=1e-5)
    # Before the subject the clean and corrupted runs agree: restoring there does nothing.
    np.testing.assert_allclose(result.grids["hidden"][: result.subject[0]], corrupted, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fast_path_equals_plain_for_every_batch_size(arch):
    lm = sharp_lm(arch)
    fact, _ = clean_top(lm)
    plain = trace_fact(lm, fact, TraceConfig(samples=3, method="plain"))
    assert plain.subject[0] > 0, "the prompt should have tokens before the subject"
    for batch_size in (1, 7, 10_000):
        fast = trace_fact(lm, fact, TraceConfig(samples=3, batch_size=batch_size))
        for kind in ("hidden", "mlp", "attn"):
            assert not np.isnan(fast.grids[kind]).any()
            assert rel_diff(fast.grids[kind], plain.grids[kind]) <= 1e-5, (arch, batch_size, kind)
        assert fast.clean_prob == plain.clean_prob
        assert fast.corrupted_prob == plain.corrupted_prob
    # The grid is not flat: restoration moves the probability somewhere.
    assert np.ptp(plain.grids["hidden"]) > 1e-3 * plain.clean_prob


def test_seeds_reproduce_and_differ():
    lm = sharp_lm("llama")
    fact, _ = clean_top(lm)
    first = trace_fact(lm, fact, TraceConfig(samples=3, seed=1))
    again = trace_fact(lm, fact, TraceConfig(samples=3, seed=1))
    other = trace_fact(lm, fact, TraceConfig(samples=3, seed=2))
    for kind in first.grids:
        np.testing.assert_array_equal(first.grids[kind], again.grids[kind])
        assert not np.allclose(first.grids[kind], other.grids[kind], rtol=1e-4, atol=0)
    assert first.corrupted_prob != other.corrupted_prob


def test_subject_not_in_prompt_is_one_clear_line():
    lm = tiny_lm("gpt2")
    fact = Fact("7", "the tower is located in", "Eiffel", "Paris")
    with pytest.raises(MemlocError) as caught:
        trace_fact(lm, fact, TraceConfig(samples=2))
    message = str(caught.value)
    assert "\n" not in message
    assert "fact 7" in message and "'Eiffel' is not in the prompt" in message


def test_bad_config_is_one_clear_line():
    with pytest.raises(MemlocError, match="unknown trace kinds"):
        TraceConfig(kinds=("hidden", "neurons"))
    with pytest.raises(MemlocError, match="samples must be at least 1"):
        TraceConfig(samples=0)
    lm = tiny_lm("gpt2")
    fact, _ = clean_top(lm)
    with pytest.raises(MemlocError, match="out of range"):
        trace_fact(lm, fact, TraceConfig(samples=2, tokens=(99,)))


def test_chosen_tokens_match_the_full_trace_and_round_trip_through_json():
    lm = sharp_lm("gpt_neox")
    fact, _ = clean_top(lm)
    full = trace_fact(lm, fact, TraceConfig(samples=2, kinds=("hidden", "mlp")))
    last = trace_fact(
        lm, fact, TraceConfig(samples=2, kinds=("hidden", "mlp"), tokens=(-1, full.last_subject))
    )
    for kind in ("hidden", "mlp"):
        traced = [full.last_subject, len(full.tokens) - 1]
        np.testing.assert_allclose(last.grids[kind][traced], full.grids[kind][traced], rtol=1e-5)
        assert np.isnan(np.delete(last.grids[kind], traced, axis=0)).all()
    assert last.best_layer == full.best_layer

    data = json.loads(json.dumps(last.to_dict()))
    assert data["grids"]["mlp"][0][0] is None  # untraced tokens become null
    back = FactTrace.from_dict(data)
    np.testing.assert_array_equal(back.grids["mlp"], last.grids["mlp"])
    assert back.subject == last.subject and back.best_layer == last.best_layer


def _synthetic(mlp_row: list[float]) -> FactTrace:
    grid = np.array([[0.1] * len(mlp_row), mlp_row])
    return FactTrace("x", "a b", "c", 0, ["a", "b"], (1, 2), 0.9, 0.1, 0.3, {"mlp": grid, "hidden": grid})


def test_best_layer_is_the_argmax_of_the_mean_effect():
    # Each fact alone peaks at layer 0 or 1; on average layer 2 recovers the most.
    a, b = _synthetic([0.5, 0.0, 0.45]), _synthetic([0.0, 0.5, 0.45])
    assert (a.best_layer, b.best_layer) == (0, 1)
    assert average_best_layer([a, b]) == 2
    report = TraceReport(TraceConfig(), [a, b])
    data = json.loads(json.dumps(report.to_dict()))
    assert data["best_layer"] == 2 and len(data["facts"]) == 2
    assert average_best_layer([]) is None


def test_heatmaps_mark_the_subject_and_draw_one_panel_per_kind():
    result = _synthetic([0.2, 0.6, 0.4])
    assert token_labels(result) == ["a", "b*"]
    fig = trace_heatmaps(result)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["Restoring MLP outputs", "Restoring the hidden state"]
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ["a", "b*"]
    assert len(fig.axes) == 4  # two panels, two colour bars
    fig.canvas.draw()
