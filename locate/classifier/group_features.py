"""Per-example features of a classifier's layer groups, read with core/hooks.trace.

A group's output (N, C, ...) becomes one row per example: a linear group's features as
they are, a conv group's channels averaged over the spatial positions (``pool="mean"``,
the global-average-pooled features a linear probe usually reads) or every coordinate
(``pool="flatten"``). Used by the benign-memorization probe and the neural-collapse
measures.

Example::

    feats = group_features(model, adapter, x, ["conv2", "fc1"], pool="mean")
    feats["fc1"].shape  # (N, D)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from memloc.core.adapters import ClassifierAdapter
from memloc.core.errors import MemlocError
from memloc.core.hooks import trace
from torch import nn

POOLS = ("mean", "flatten")


def as_rows(act: torch.Tensor, pool: str) -> torch.Tensor:
    """(N, C, ...) -> (N, D) float32: channels averaged over positions, or all coordinates."""
    if act.ndim > 2 and pool == "mean":
        act = act.flatten(2).mean(2)
    return act.flatten(1).float()


def resolve_groups(adapter: ClassifierAdapter, groups: Sequence[str] | None) -> list[str]:
    """The named groups in the adapter's order (all of them for None); unknown names are one line."""
    if groups is None:
        return adapter.names
    unknown = [g for g in groups if g not in adapter.names]
    if unknown:
        raise MemlocError(f"unknown layer group {unknown[0]!r}; the model has {', '.join(adapter.names)}")
    return [g for g in adapter.names if g in groups]


@torch.no_grad()
def group_features(
    model: nn.Module,
    adapter: ClassifierAdapter,
    x: torch.Tensor,
    groups: Sequence[str],
    *,
    pool: str = "mean",
    batch_size: int = 512,
) -> dict[str, torch.Tensor]:
    """Each named group's (N, D) features of ``x``, in eval mode, on the inputs' device."""
    sites = {name: adapter.site(name) for name in groups}
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in groups}
    try:
        with trace(model, adapter, sites.values()) as seen:
            for start in range(0, len(x), batch_size):
                model(x[start : start + batch_size])
                for name, site in sites.items():
                    parts[name].append(as_rows(seen[site], pool))
    finally:
        model.train(was_training)
    return {name: torch.cat(rows) for name, rows in parts.items()}
