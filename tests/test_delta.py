"""Weight deltas: applied in the right layout, restored bit for bit."""

from __future__ import annotations

import pytest
import torch
from memloc.core.hooks import trace
from memloc.core.sites import Site
from memloc.edit.delta import LayerDelta, WeightDelta, apply, weights_hash
from tiny_lms import tiny_lm


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_apply_adds_left_right_and_restore_is_exact(arch):
    lm = tiny_lm(arch)
    model, adapter = lm.model, lm.adapter
    gen = torch.Generator().manual_seed(0)
    left = torch.randn(adapter.d_model, 1, generator=gen)
    right = torch.randn(adapter.d_mlp, 1, generator=gen)
    delta = WeightDelta("test", (LayerDelta(1, left, right),))
    before = weights_hash(model)
    ids = torch.tensor([lm.tokenizer("the city of Paris")["input_ids"]])
    with trace(model, adapter, [Site(1, "mlp.post"), Site(1, "mlp.out")]) as seen, torch.no_grad():
        model(ids)
        clean = seen[Site(1, "mlp.out")].clone()
        handle = apply(model, adapter, delta)
        model(ids)
    # mlp.out moves by ΔW a = left (rightᵀ a): the declared layout is honoured.
    expected = clean + (seen[Site(1, "mlp.post")] @ right) @ left.T
    torch.testing.assert_close(seen[Site(1, "mlp.out")], expected, rtol=1e-5, atol=1e-5)
    assert weights_hash(model) != before
    handle.restore()
    assert weights_hash(model) == before
    assert set(handle.originals) == {
        n for n, p in model.named_parameters() if p is adapter.down_weight(model, 1)
    }
