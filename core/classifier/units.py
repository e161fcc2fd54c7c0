"""Scaling a layer group's units inside an activation, whatever its layout.

A group declares where its units lie (`LayerGroup.unit_axis`) and how many coordinates
each spans (`LayerGroup.unit_size`): conv channels are axis 1 of (N, C, H, W), linear
features axis 1 of (N, F), a ViT's MLP neurons the last axis of (N, T, F), and an
attention head ``head_dim`` consecutive features of the last axis. Every method that
masks units (the flip search, example-tied dropout) goes through `scale_units`, so
a new layout is declared once in the adapter card.
"""

from __future__ import annotations

import torch
from memloc.core.adapters import LayerGroup


def scale_units(act: torch.Tensor, masks: torch.Tensor, group: LayerGroup) -> torch.Tensor:
    """``act`` with unit u of example n multiplied by ``masks[n, u]``.

    ``masks`` is (N, units), or (units,) for one mask shared by the batch.

    Example::

        out = scale_units(act, torch.ones(len(act), group.units), group)  # unchanged
    """
    m = masks.to(act.dtype)
    if m.dim() == 1:
        m = m.expand(act.shape[0], -1)
    if m.shape[1] != group.units:
        raise ValueError(f"group {group.name} has {group.units} units, got a mask of {m.shape[1]}")
    if group.unit_size > 1:
        m = m.repeat_interleave(group.unit_size, dim=1)
    axis = group.unit_axis % act.dim()
    shape = [1] * act.dim()
    shape[0], shape[axis] = m.shape[0], m.shape[1]
    return act * m.view(shape)
