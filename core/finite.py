"""Name non-finite weights and activations before a method runs on them.

A NaN in one weight makes every method's numbers quietly meaningless (a trace with no
best layer, no knowledge neurons, a zero change) or ends in a linear-algebra traceback
far from the cause. So:

- `check_finite_weights` runs once per load: one min/max reduction per parameter and
  floating buffer (NaN propagates through both; ``isfinite(t).all()`` would allocate a
  mask the size of the tensor and take several times longer), and names the first
  damaged tensor with its NaN and inf counts.
- `require_finite` guards a method's clean forward pass. It costs one reduction over
  the output; only when that fails does one extra hooked pass (`diagnose_pass`) find
  the first site whose activation is non-finite, e.g. fp16 overflow with finite weights.

Usage::

    check_finite_weights(model, source="path/to/model")
    logits = model(input_ids=ids).logits
    require_finite(model, adapter, logits, "the clean pass of fact 3", input_ids=ids)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from memloc.core.errors import MemlocError
from memloc.core.sites import Site
from torch import nn

# Sites in the order a block computes them, so the first non-finite one is the culprit.
_BLOCK_KINDS = ("attn.out", "mlp.out", "resid.post")


def _tensors(model: nn.Module) -> Iterator[tuple[str, str, torch.Tensor]]:
    """(kind, name, tensor) of every parameter and floating buffer with real storage."""
    for kind, named in (("weight", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, tensor in named:
            if tensor.is_floating_point() and tensor.device.type != "meta":
                yield kind, name, tensor


def _finite(tensor: torch.Tensor) -> bool:
    if tensor.numel() == 0:
        return True
    return bool(torch.isfinite(torch.stack(torch.aminmax(tensor))).all())


def _counts(tensor: torch.Tensor) -> str:
    nan = int(torch.isnan(tensor).sum())
    inf = int(torch.isinf(tensor).sum())
    parts = [f"{nan} NaN"] * bool(nan) + [f"{inf} inf"] * bool(inf)
    return " and ".join(parts)


def check_finite_weights(model: nn.Module, source: str = "") -> None:
    """Raise a one-line `MemlocError` naming the first parameter or buffer holding NaN or inf.

    Tied weights are checked once; integer buffers (positions, masks) are skipped.
    """
    bad = [(kind, name, t) for kind, name, t in _tensors(model) if not _finite(t.detach())]
    if not bad:
        return
    kind, name, tensor = bad[0]
    more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
    where = f" in {source}" if source else ""
    raise MemlocError(
        f"model {kind} {name} holds {_counts(tensor)} of {tensor.numel():,} values{where}{more}; "
        "the checkpoint is damaged or was saved from a diverged run: use a healthy copy"
    )


def _sites(adapter: Any) -> list[Site]:
    return [Site(0, "resid.pre")] + [Site(j, kind) for j in range(adapter.n_layers) for kind in _BLOCK_KINDS]


def diagnose_pass(model: nn.Module, adapter: Any, **inputs: Any) -> Site | None:
    """The first site whose activation is non-finite in a forward pass on ``inputs``; None if all are finite."""
    from memloc.core.hooks import trace  # hooks import adapters, which need nothing from here

    sites = _sites(adapter)
    with torch.no_grad(), trace(model, adapter, sites) as seen:
        model(**inputs)
    return next((s for s in sites if s in seen and not bool(torch.isfinite(seen[s]).all())), None)


def require_finite(model: nn.Module, adapter: Any, values: torch.Tensor, what: str, **inputs: Any) -> None:
    """Raise a one-line `MemlocError` when ``values`` (logits of a pass on ``inputs``) are not all finite.

    The message names the first non-finite site, found by one more hooked pass.
    """
    if bool(torch.isfinite(values).all()):
        return
    site = diagnose_pass(model, adapter, **inputs)
    dtype = next(model.parameters()).dtype
    at = f"first at {site}" if site is not None else "only after the last block (final norm or unembedding)"
    hint = (
        f"activations overflow {str(dtype).removeprefix('torch.')}: load the model with dtype float32"
        if dtype in (torch.float16, torch.bfloat16)
        else "the weights are too large for float32 or the inputs are out of range: check that layer's weights"
    )
    raise MemlocError(f"{what} gives non-finite activations, {at}; {hint}")
