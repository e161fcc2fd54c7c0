"""The prefix-cache runner: a cached prefix plus hand-stepped blocks equal one full forward pass."""

from __future__ import annotations

import pytest
import torch
from memloc.core.hooks import trace
from memloc.core.lm.prefix_runner import BlockRunner, PrefixCache, cache_inputs
from memloc.core.sites import Site
from tiny_lms import tiny_lm

IDS = [[4, 9, 12, 7, 3, 15, 2]]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
def test_cached_prefix_and_stepped_blocks_equal_the_full_pass(arch):
    lm = tiny_lm(arch)
    ids, t, first = torch.tensor(IDS), 4, 1
    with torch.no_grad(), trace(lm.model, lm.adapter, [Site(first - 1, "resid.post")]) as seen:
        full = lm.model(input_ids=ids).logits
    with torch.no_grad():
        prefix, _ = PrefixCache.run(lm.model, input_ids=ids[:, :t])
    assert prefix.length == t
    with torch.no_grad():
        # The model on the later tokens, three rows sharing the one-row prefix.
        rows = lm.model(input_ids=ids[:, t:].expand(3, -1), **cache_inputs(lm.model, prefix.fresh(rows=3)))
        torch.testing.assert_close(rows.logits, full[:, t:].expand(3, -1, -1), rtol=1e-5, atol=1e-5)
        assert prefix.length == t  # the pass extended its own copy, not the stored prefix
        # The blocks above layer 0 by hand, on the clean residual stream from token t on.
        probe = cache_inputs(lm.model, prefix.fresh(length=t))
        runner = BlockRunner(lm, range(first, lm.n_layers), input_ids=ids[:, t:], **probe)
        h = seen[Site(first - 1, "resid.post")][:, t:]
        h = runner.run(h, prefix.fresh(runner.layers, length=t))
        torch.testing.assert_close(runner.logits(h), full[:, t:], rtol=1e-5, atol=1e-5)


def test_fresh_takes_rows_per_layer_and_nothing_for_an_empty_prefix():
    lm = tiny_lm("llama")
    ids = torch.tensor(IDS).expand(3, -1)
    with torch.no_grad():
        prefix, _ = PrefixCache.run(lm.model, input_ids=ids)
    pick = {0: torch.tensor([2]), 1: torch.tensor([0, 1])}
    cache = prefix.fresh([0, 1], length=2, rows=pick)
    assert cache.get_seq_length(0) == 2
    assert prefix.fresh(length=0).get_seq_length() == 0
    torch.testing.assert_close(_keys(cache, 1), prefix.kv[1][0][:2, :, :2])
    torch.testing.assert_close(_keys(cache, 0), prefix.kv[0][0][2:, :, :2])


def _keys(cache, layer):
    from memloc.core.lm.prefix_runner import layer_kv

    return layer_kv(cache, layer)[0]
