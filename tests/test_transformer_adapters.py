"""Transformer adapters: every site reads what its name says, on each architecture."""

from __future__ import annotations

import pytest
import torch
from memloc.core.adapters import SUPPORTED_MODEL_TYPES, LayerNotFoundError, TransformerAdapter
from memloc.core.errors import UnsupportedModelError
from memloc.core.hooks import patch, trace
from memloc.core.sites import TRANSFORMER_KINDS, Site
from tiny_lms import ARCHITECTURES, tiny_lm
from torch import nn


def _ids(lm) -> torch.Tensor:
    return torch.tensor([lm.tokenizer("the capital of Zorbia is the city of")["input_ids"]])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sites_equal_the_tensors_they_name(arch):
    lm = tiny_lm(arch)
    model, adapter = lm.model, lm.adapter
    sites = [Site(i, k) for i in range(adapter.n_layers) for k in TRANSFORMER_KINDS]
    with trace(model, adapter, sites) as seen, torch.no_grad():
        out = model(_ids(lm), output_hidden_states=True)
    hidden = out.hidden_states
    for i in range(adapter.n_layers):
        pre, post = seen[Site(i, "resid.pre")], seen[Site(i, "resid.post")]
        torch.testing.assert_close(pre, hidden[i])
        # Every supported block adds its attention and MLP outputs to the residual stream.
        torch.testing.assert_close(post, pre + seen[Site(i, "attn.out")] + seen[Site(i, "mlp.out")])
        # mlp.post is the down-projection's input: projecting it gives mlp.out.
        w, b = adapter.down_matrix(model, i), adapter.down_bias(model, i)
        projected = seen[Site(i, "mlp.post")] @ w.T + (0 if b is None else b)
        torch.testing.assert_close(projected, seen[Site(i, "mlp.out")], rtol=1e-5, atol=1e-5)
        assert seen[Site(i, "mlp.post")].shape[-1] == adapter.d_mlp


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_gated_neurons_are_act_gate_times_up(arch):
    lm = tiny_lm(arch)
    model, adapter = lm.model, lm.adapter
    layer = 1
    mlp = model.get_submodule(f"model.layers.{layer}.mlp")
    block = model.get_submodule(f"model.layers.{layer}")
    sites = [Site(layer, k) for k in ("resid.pre", "attn.out", "mlp.post", "mlp.out")]
    with trace(model, adapter, sites) as seen, torch.no_grad():
        model(_ids(lm))
    # The MLP reads the normed residual stream after attention.
    x = block.post_attention_layernorm(seen[Site(layer, "resid.pre")] + seen[Site(layer, "attn.out")])
    expected = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
    torch.testing.assert_close(seen[Site(layer, "mlp.post")], expected)
    torch.testing.assert_close(
        seen[Site(layer, "mlp.post")] @ adapter.down_matrix(model, layer).T, seen[Site(layer, "mlp.out")]
    )


def test_gpt2_conv1d_layout_is_declared_not_guessed():
    lm = tiny_lm("gpt2")
    adapter = lm.adapter
    assert adapter.card.down_layout == "in_out"
    weight = adapter.down_weight(lm.model, 0)
    assert weight.shape == (adapter.d_mlp, adapter.d_model)
    assert adapter.down_matrix(lm.model, 0).shape == (adapter.d_model, adapter.d_mlp)
    # down_matrix is a view: editing it edits the model.
    before = weight[3, 5].item()
    with torch.no_grad():
        adapter.down_matrix(lm.model, 0)[5, 3] += 1.0
    assert weight[3, 5].item() == pytest.approx(before + 1.0)


def test_patch_mlp_post_changes_output_and_is_removed():
    lm = tiny_lm("llama")
    ids = _ids(lm)
    with torch.no_grad():
        clean = lm.model(ids).logits
        with patch(lm.model, lm.adapter, {Site(2, "mlp.post"): lambda a: a * 0}):
            zeroed = lm.model(ids).logits
        again = lm.model(ids).logits
    assert not torch.allclose(clean, zeroed)
    torch.testing.assert_close(clean, again, rtol=0, atol=0)


def test_unsupported_model_lists_supported_types():
    model = nn.Linear(2, 2)
    model.config = type("Config", (), {"model_type": "bert"})()
    with pytest.raises(UnsupportedModelError) as err:
        TransformerAdapter.for_model(model)
    for name in SUPPORTED_MODEL_TYPES:
        assert name in str(err.value)


def test_layer_out_of_range_is_one_clear_error():
    lm = tiny_lm("gpt2")
    with pytest.raises(LayerNotFoundError, match=r"layers 0\.\.2"):
        lm.adapter.hook_point(Site(3, "mlp.post"))
