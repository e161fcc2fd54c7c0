"""Half precision: a bf16 ROME edit runs, and an update that would put NaN or inf in a weight is refused."""

from __future__ import annotations

import pytest
import torch
from memloc.core.errors import MemlocError
from memloc.edit.delta import LayerDelta, WeightDelta, apply, weights_hash
from memloc.edit.rome import RomeConfig, compute_rome
from memloc.edit.templates import context_templates
from test_rome import QUICK, TINY_FACT, TINY_TEMPLATES, identity
from tiny_lms import tiny_lm


def _delta(lm, layer: int, scale: float, *, poison: float | None = None) -> WeightDelta:
    left = torch.full((lm.adapter.d_model, 1), scale, dtype=torch.float64)
    if poison is not None:
        left[3, 0] = poison
    return WeightDelta(
        "test", (LayerDelta(layer, left, torch.ones(lm.adapter.d_mlp, 1, dtype=torch.float64)),)
    )


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_a_non_finite_update_is_refused_naming_its_layer_and_the_model_is_untouched(poison):
    lm = tiny_lm("llama")
    before = weights_hash(lm.model)
    with pytest.raises(MemlocError, match="layer 1") as caught:
        apply(lm.model, lm.adapter, _delta(lm, 1, 0.1, poison=poison))
    assert "\n" not in str(caught.value) and "test" in str(caught.value)
    assert weights_hash(lm.model) == before


def test_an_update_that_overflows_float16_is_refused_before_any_weight_changes():
    lm = tiny_lm("gpt2")
    lm.model.half()
    before = weights_hash(lm.model)
    fine, overflow = _delta(lm, 0, 0.01), _delta(lm, 1, 1e6)  # 1e6 is past float16's 65504
    combined = WeightDelta("test", fine.layers + overflow.layers)
    with pytest.raises(MemlocError, match=r"layer 1.*float16"):
        apply(lm.model, lm.adapter, combined)
    assert weights_hash(lm.model) == before  # layer 0 was not written either


def test_a_bfloat16_rome_edit_runs_and_restores():
    lm = tiny_lm("llama")
    lm.model.to(torch.bfloat16)
    templates = context_templates(lm, TINY_TEMPLATES, cache=False)
    before = weights_hash(lm.model)
    delta = compute_rome(lm, TINY_FACT, identity(lm), RomeConfig(1, target=QUICK), templates)
    assert all(torch.isfinite(part.left).all() and torch.isfinite(part.right).all() for part in delta.layers)
    with apply(lm.model, lm.adapter, delta):
        assert weights_hash(lm.model) != before
        assert lm.adapter.down_weight(lm.model, 1).dtype == torch.bfloat16
    assert weights_hash(lm.model) == before
