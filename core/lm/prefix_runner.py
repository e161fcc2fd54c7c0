"""One prefix-cache runner for language-model methods that intervene late in a sequence.

Attention is causal, so a method that changes the computation only from token t on, or
only from block l up, need not redo what comes before: run the prefix once, keep its
keys and values (`PrefixCache`), and then either

- run the model on the later tokens against a fresh copy of that cache, many rows at
  once (knowledge neurons: the last token only, Dai et al. 2022); or
- call the blocks above a site by hand on hidden states of one's own, with the very
  arguments the model passes them (masks, rotary tables, positions) recorded once on a
  probe pass, and form logits only at the positions a loss needs (`BlockRunner`:
  causal tracing and the ROME/MEMIT target scorer, Meng et al. 2022, 2023).

Everything that depends on transformers' cache classes and their changes between
versions (the keyword that passes a cache, where an output keeps it, how a layer's keys
are read, how a cache is built) lives in this file and nowhere else.

Usage::

    prefix, _ = PrefixCache.run(lm.model, input_ids=ids[:, :-1])
    out = lm.model(input_ids=ids[:, -1:].expand(8, 1), **cache_inputs(lm.model, prefix.fresh(rows=8)))
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from memloc.core.hooks import capture_calls
from memloc.core.lm.model import LM
from memloc.core.sites import Site
from torch import nn
from transformers.cache_utils import Cache, DynamicCache

Call = tuple[tuple, dict]  # a block's positional and keyword arguments, as the model passed them
KV = tuple[torch.Tensor, torch.Tensor]  # one layer's keys and values, (rows, heads, tokens, head_dim)

# --- transformers version shims ---------------------------------------------------------


def cache_keyword(model: nn.Module) -> str:
    """The keyword that hands a KV cache to the model: transformers 5 renamed past_key_values to cache."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_of(output: Any) -> Cache:
    """The KV cache a forward pass returned, under either name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def cache_inputs(model: nn.Module, cache: Cache) -> dict:
    """Keyword arguments that make ``model`` read and extend ``cache``."""
    return {cache_keyword(model): cache, "use_cache": True}


def layer_kv(cache: Cache, layer: int) -> KV:
    """One layer's (keys, values) from a transformers cache."""
    shim: Any = cache  # the layout differs between transformers versions
    if hasattr(shim, "layers"):
        return shim.layers[layer].keys, shim.layers[layer].values
    return shim.key_cache[layer], shim.value_cache[layer]  # transformers 4.x


def new_cache(config: Any = None) -> Cache:
    """An empty cache; with the model's config its layers have the model's own types (sliding windows)."""
    if config is None:
        return DynamicCache()
    try:
        return DynamicCache(config=config)
    except TypeError:  # transformers before 4.56 builds every layer lazily
        return DynamicCache()


def run_block(block: nn.Module, call: Call, h: torch.Tensor, cache: Cache) -> torch.Tensor:
    """Call a block as the model did in a recorded call, on hidden states ``h`` with ``cache``.

    ``call`` is the (args, kwargs) that `core.hooks.capture_calls` recorded; any cache
    object in it is replaced by ``cache``.
    """
    args, kwargs = call
    args = tuple(cache if isinstance(a, Cache) else a for a in args)
    kwargs = {k: cache if isinstance(v, Cache) else v for k, v in kwargs.items()}
    if args:
        args = (h, *args[1:])
    else:
        kwargs["hidden_states"] = h
    out = block(*args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


# --- the prefix's keys and values ---------------------------------------------------------


@dataclass(frozen=True)
class PrefixCache:
    """The keys and values of a prefix, layer by layer, kept once and copied into fresh caches.

    ``kv[j]`` is layer j's (keys, values). A forward pass extends the cache it is given in
    place, so every pass gets its own from `fresh`; the stored tensors never change.
    """

    kv: tuple[KV, ...]
    config: object | None = None

    @classmethod
    def of(cls, cache: Cache, config: object | None = None) -> PrefixCache:
        """The keys and values a transformers cache holds (e.g. one a forward pass returned)."""
        return cls(tuple(layer_kv(cache, j) for j in range(len(cache))), config)

    @classmethod
    def run(cls, model: nn.Module, **inputs: object) -> tuple[PrefixCache, Any]:
        """Run ``model(**inputs)`` with a cache; returns the prefix cache and the model's output.

        Hooks active around the call (`core.hooks.trace`, `patch`) see and change it as usual.
        """
        out = model(**inputs, use_cache=True)
        return cls.of(cache_of(out), getattr(model, "config", None)), out

    @property
    def length(self) -> int:
        """Tokens in the prefix."""
        return self.kv[0][0].shape[-2] if self.kv else 0

    def fresh(
        self,
        layers: Iterable[int] | None = None,
        *,
        length: int | None = None,
        rows: int | Mapping[int, torch.Tensor] | None = None,
    ) -> Cache:
        """A new cache with the first ``length`` tokens (default all) of ``layers`` (default all).

        ``rows``: None keeps the stored rows; an int n repeats a one-row prefix over n rows;
        a mapping gives, per layer, the indices of the stored rows to take (row counts may
        then differ between layers). With no tokens to hold, the cache is empty.
        """
        cache = new_cache(self.config)
        length = self.length if length is None else length
        if length == 0:
            return cache
        for j in range(len(self.kv)) if layers is None else layers:
            keys, values = (self._rows(t[:, :, :length], j, rows) for t in self.kv[j])
            cache.update(keys, values, j)
        return cache

    @staticmethod
    def _rows(t: torch.Tensor, layer: int, rows: int | Mapping[int, torch.Tensor] | None) -> torch.Tensor:
        if rows is None:
            return t
        if isinstance(rows, int):
            return t.expand(rows, *t.shape[1:])  # no copy: the cache's first update copies once
        return t[rows[layer].to(t.device)]


# --- stepping blocks by hand ---------------------------------------------------------------


class BlockRunner:
    """Calls the blocks ``layers`` of a model by hand, as the model itself calls them.

    One probe pass ``model(**probe)`` records the arguments each of those blocks receives;
    the probe should look like the passes to come (the same tokens after the same cached
    prefix, any number of rows), since masks and positions are taken from it as they are.
    Then `block` / `run` push hidden states of one's own through the blocks, with a cache
    from `PrefixCache.fresh` standing in for the probe's, and `logits` applies the final
    norm and the unembedding to just the positions given.

    Usage::

        runner = BlockRunner(lm, range(l + 1, lm.n_layers), input_ids=ids[:, t:],
                             **cache_inputs(lm.model, prefix.fresh(length=t)))
        h = runner.run(h, prefix.fresh(runner.layers, length=t))
        logits = runner.logits(h[:, -1])
    """

    def __init__(self, lm: LM, layers: Sequence[int], **probe: object) -> None:
        self.lm = lm
        self.layers = tuple(layers)
        sites = [Site(j, "resid.pre") for j in self.layers]
        # The base model stops at the final norm: the probe reads the blocks' arguments, not logits.
        with torch.no_grad(), capture_calls(lm.model, lm.adapter, sites) as calls:
            lm.model.base_model(**probe)
        self.calls = {j: calls[Site(j, "resid.pre")] for j in self.layers}
        self._blocks = lm.adapter.blocks(lm.model)

    def block(self, layer: int, h: torch.Tensor, cache: Cache) -> torch.Tensor:
        """Block ``layer``'s output for input ``h`` (rows, tokens, D)."""
        return run_block(self._blocks[layer], self.calls[layer], h, cache)

    def run(self, h: torch.Tensor, cache: Cache) -> torch.Tensor:
        """``h`` through every block of ``layers`` in turn."""
        for layer in self.layers:
            h = self.block(layer, h, cache)
        return h

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and unembedding of the hidden states ``h`` (..., D) of the last block."""
        model = self.lm.model
        return model.get_output_embeddings()(self.lm.adapter.final_norm(model)(h))
