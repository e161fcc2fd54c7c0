"""Token accuracy of texts, optionally with some neurons zeroed (MemPi's DEL measure).

Token accuracy (exact memorization, Tirumala et al. 2022) is the share of positions
whose argmax next token is the true one. Texts of one length share a forward pass,
``batch_size`` at a time, so no padding can change a result.

    acc = token_accuracy(model, adapter, texts, zeroed=[(0, 3), (2, 17)])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from memloc.core.adapters import TransformerAdapter
from memloc.core.hooks import patch
from memloc.core.sites import Neuron, Site
from memloc.locate.lm.memorized.types import model_device


def token_accuracy(
    model: torch.nn.Module,
    adapter: TransformerAdapter,
    texts: Sequence[tuple[int, ...]],
    zeroed: Sequence[Neuron] = (),
    batch_size: int = 8,
) -> np.ndarray:
    """Per text, the share of next tokens the model predicts by argmax, with ``zeroed`` neurons at 0."""
    device = model_device(model)
    fns = _zero_fns(adapter, zeroed, device)
    out = np.zeros(len(texts))
    with torch.no_grad(), patch(model, adapter, fns):
        for chunk in length_chunks(texts, batch_size):
            ids = torch.tensor([texts[i] for i in chunk], device=device)
            out[chunk] = row_accuracy(model(input_ids=ids).logits, ids).double().cpu().numpy()
    return out


def row_accuracy(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per row of (R, T), the share of positions 1..T-1 whose argmax logit is the true token."""
    return (logits[:, :-1].argmax(-1) == ids[:, 1:]).double().mean(-1)


def length_chunks(texts: Sequence[tuple[int, ...]], batch_size: int) -> Iterator[list[int]]:
    """Indices of texts, in chunks of at most ``batch_size`` texts of one length."""
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(texts):
        by_length.setdefault(len(ids), []).append(i)
    for members in by_length.values():
        for start in range(0, len(members), batch_size):
            yield members[start : start + batch_size]


def _zero_fns(
    adapter: TransformerAdapter, zeroed: Sequence[Neuron], device: torch.device
) -> dict[Site, Callable[[torch.Tensor], torch.Tensor]]:
    units: dict[int, list[int]] = {}
    for layer, unit in zeroed:
        units.setdefault(layer, []).append(unit)
    fns = {}
    for layer, chosen in units.items():
        keep = torch.ones(adapter.d_mlp, device=device)
        keep[chosen] = 0.0
        fns[Site(layer, "mlp.post")] = _scale(keep)
    return fns


def _scale(keep: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(act: torch.Tensor) -> torch.Tensor:
        return act * keep.to(act.device, act.dtype)

    return fn
