"""Half precision: fp16/bf16 edits by ROME, MEMIT and AlphaEdit run with float64 deltas; NaN/inf is refused, named, unwritten."""

from __future__ import annotations

import pytest
import torch
from memloc.core.errors import MemlocError
from memloc.core.hooks import patch
from memloc.core.sites import Site
from memloc.edit.alphaedit import AlphaEditConfig, compute_alphaedit
from memloc.edit.delta import (
    LayerDelta,
    NonFiniteEditError,
    WeightDelta,
    apply,
    require_finite_part,
    weights_hash,
)
from memloc.edit.memit import MemitConfig, compute_memit, memit_solve, spread_with, subject_states
from memloc.edit.null_space import NullSpaceConfig, Projector, compute_projector
from memloc.edit.rome import RomeConfig, compute_rome
from memloc.edit.targets import NonFiniteTargetError, TargetConfig, optimize_target
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


# --- every method in float16 and bfloat16; injected NaN/inf caught, named, and nothing written ---------


HALF = [torch.float16, torch.bfloat16]
LAYER = 1


def _half_lm(dtype: torch.dtype):
    lm = tiny_lm("llama")
    lm.model.to(dtype)
    lm.model.requires_grad_(False)
    return lm, context_templates(lm, TINY_TEMPLATES, cache=False)


def _projector(lm) -> Projector:
    """P of preserved keys spanning a third of the key space, so an edit has directions left."""
    gen = torch.Generator().manual_seed(0)
    k0 = torch.randn(lm.adapter.d_mlp, lm.adapter.d_mlp // 3, generator=gen, dtype=torch.float64)
    return compute_projector(k0 @ k0.T / k0.shape[1], NullSpaceConfig(threshold=1e-9))


def _edit(method: str, lm, templates):
    """The delta of ``method`` for TINY_FACT at layer 1 of ``lm``."""
    if method == "rome":
        return compute_rome(lm, TINY_FACT, identity(lm), RomeConfig(LAYER, target=QUICK), templates)
    if method == "memit":
        config = MemitConfig(layers=(LAYER,), target=QUICK, mom2_weight=1.0)
        return compute_memit(lm, [TINY_FACT], {LAYER: identity(lm)}, config, templates)
    config = AlphaEditConfig(layers=(LAYER,), target=QUICK)
    delta, _ = compute_alphaedit(lm, [TINY_FACT], {LAYER: _projector(lm)}, config, templates)
    return delta


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
@pytest.mark.parametrize("method", ["rome", "memit", "alphaedit"])
def test_half_precision_edits_give_finite_float64_deltas_that_apply_and_restore(method, dtype):
    lm, templates = _half_lm(dtype)
    before = weights_hash(lm.model)
    delta = _edit(method, lm, templates)
    assert weights_hash(lm.model) == before  # computing an edit only reads the model
    for part in delta.layers:
        assert part.left.dtype == part.right.dtype == torch.float64
        assert torch.isfinite(part.left).all() and torch.isfinite(part.right).all()
        assert part.dense().norm() > 0
    with apply(lm.model, lm.adapter, delta):
        assert lm.adapter.down_weight(lm.model, LAYER).dtype == dtype
        assert weights_hash(lm.model) != before
    assert weights_hash(lm.model) == before


def test_the_target_delta_is_optimised_in_float32_and_matches_the_float32_models():
    """A bf16 δ would round Adam's small steps away; δ and its moments stay float32."""
    free = TargetConfig(steps=8, clamp=1000.0, weight_decay=0.0, kl_weight=0.0, lr=0.05)  # the NLL alone
    site = Site(LAYER, "mlp.out")
    lm, templates = _half_lm(torch.float32)
    reference = optimize_target(lm, TINY_FACT, site, free, templates).delta
    lm, templates = _half_lm(torch.bfloat16)
    result = optimize_target(lm, TINY_FACT, site, free, templates)
    assert result.delta.dtype == torch.float32 and result.v0.dtype == torch.bfloat16
    assert result.steps == 8 and result.p_new_after > result.p_new_before
    assert (result.delta - reference).norm() <= 0.03 * reference.norm()


class _PoisonGradient(torch.autograd.Function):
    """Identity forward; NaN backward: the loss stays finite and only the Adam update goes bad."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return torch.full_like(grad, float("nan"))


def _inf_in_steps(act: torch.Tensor) -> torch.Tensor:
    # Only the optimisation's passes carry gradients; the clean pass stays finite.
    return act + float("inf") if act.requires_grad else act


def _nan_gradient(act: torch.Tensor) -> torch.Tensor:
    return _PoisonGradient.apply(act)


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
@pytest.mark.parametrize("method", ["rome", "memit", "alphaedit"])
@pytest.mark.parametrize(
    ("poison", "what"),
    [
        (_inf_in_steps, "non-finite loss at step 1"),
        (_nan_gradient, "non-finite δ after its Adam update at step 1"),
    ],
    ids=["inf-forward", "nan-gradient"],
)
def test_an_injected_non_finite_value_is_caught_naming_the_step_and_the_layer(method, dtype, poison, what):
    lm, templates = _half_lm(dtype)
    before = weights_hash(lm.model)
    # Above the edit layer (ROME's δ site is layer 1's MLP output, MEMIT's its residual stream).
    site = Site(LAYER + 1, "mlp.out")
    with (
        patch(lm.model, lm.adapter, {site: poison}, detach=False),
        pytest.raises(NonFiniteTargetError) as caught,
    ):
        _edit(method, lm, templates)
    message = str(caught.value)
    assert what in message and f"at layer {LAYER} (blocks.{LAYER}." in message and "\n" not in message
    assert weights_hash(lm.model) == before


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
def test_a_non_finite_layer_update_stops_the_spread_naming_the_layer_and_the_model_is_untouched(dtype):
    lm, templates = _half_lm(dtype)
    before = weights_hash(lm.model)
    config = MemitConfig(layers=(0, LAYER), mom2_weight=1.0)
    memit = memit_solve({0: identity(lm), LAYER: identity(lm)}, config)

    def solve(layer, keys, residuals):
        left, right, extra = memit(layer, keys, residuals)
        if layer == LAYER:  # as if the second layer's solve overflowed
            right = right * float("inf")
        return left, right, extra

    targets = subject_states(lm, [TINY_FACT], LAYER, 8) + 0.1
    with pytest.raises(NonFiniteEditError, match=rf"memit update of layer {LAYER} \(edit layer 2 of 2\)"):
        spread_with(lm, [TINY_FACT], targets, (0, LAYER), solve, templates, 8)
    assert weights_hash(lm.model) == before  # layer 0's update, in place while layer 1 was read, is undone


def test_require_finite_part_names_the_method_layer_and_step():
    left = torch.ones(4, 1, dtype=torch.float64)
    right = torch.full((6, 1), float("nan"), dtype=torch.float64)
    with pytest.raises(NonFiniteEditError, match=r"the memit update of layer 3 \(edit layer 2 of 5\)"):
        require_finite_part("memit", LayerDelta(3, left, right), "edit layer 2 of 5")
    fine = LayerDelta(3, left, torch.ones(6, 1, dtype=torch.float64))
    assert require_finite_part("memit", fine) is fine
