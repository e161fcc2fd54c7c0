"""The dynamics of an imported run, recomputed from its checkpoints.

At each checkpoint, one batched no-grad pass gives every training example's loss and
prediction on its given label (the same `RunData.evaluate` training records with, so
a memloc-trained run imported as foreign files gets the same arrays), and the test
accuracy. A second, gradient pass gives the full-data gradient of the clean part and
of the noisy part of the mean training loss, L = (1/N) sum_i l_i = L_c + L_n, per layer
group: their norms (scaled by 1/sqrt(numel), as in training's accounting) and their
cosine. These are *checkpoint* gradients: the training steps' gradients are gone, so
they are labelled ``gradient_kind: "checkpoint"`` wherever they are stored. The model
is in eval mode for both passes (no dropout, BatchNorm on its running statistics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from memloc.core.adapters import ClassifierAdapter
from memloc.core.classifier.gradients import GroupGradientStats, group_stats, split_gradients
from memloc.core.classifier.splits import Accuracies, RunData
from torch import nn

GRADIENT_KIND = "checkpoint"


@dataclass(frozen=True)
class CheckpointDynamics:
    """What one checkpoint contributes: per-example loss and prediction, accuracies, gradients."""

    loss: np.ndarray
    pred: np.ndarray
    accuracies: Accuracies
    gradients: GroupGradientStats | None


def group_indices(model: nn.Module, adapter: ClassifierAdapter) -> list[list[int]]:
    """For each layer group, the positions of its parameters in ``model.parameters()``."""
    index_of = {id(p): i for i, p in enumerate(model.parameters())}
    return [[index_of[id(p)] for p in adapter.group_parameters(model, g.name)] for g in adapter.groups]


def checkpoint_gradients(
    model: nn.Module, data: RunData, groups: list[list[int]], batch_size: int = 256
) -> GroupGradientStats:
    """Per-group norms and cosine of the full-data clean and noisy gradients at the model's weights.

    Batches are summed with weight B/N so the two parts add to the gradient of the
    mean loss over all N training examples, whatever the batch size.
    """
    was_training = model.training
    model.eval()
    params = list(model.parameters())
    clean = [torch.zeros_like(p) for p in params]
    noisy = [torch.zeros_like(p) for p in params]
    n = len(data.x_train)
    try:
        for start in range(0, n, batch_size):
            x, y = data.x_train[start : start + batch_size], data.given[start : start + batch_size]
            losses = F.cross_entropy(model(x).float(), y, reduction="none")
            c, z = split_gradients(losses, data.noisy[start : start + batch_size], params)
            weight = len(x) / n
            for acc_c, acc_z, g_c, g_z in zip(clean, noisy, c, z, strict=True):
                acc_c.add_(g_c, alpha=weight)
                acc_z.add_(g_z, alpha=weight)
    finally:
        model.train(was_training)
    return group_stats(clean, noisy, groups)


def checkpoint_dynamics(
    model: nn.Module,
    data: RunData,
    groups: list[list[int]] | None,
    *,
    mask_known: bool,
    batch_size: int = 1024,
) -> CheckpointDynamics:
    """Loss, prediction, accuracies and (with ``groups``) checkpoint gradients of one checkpoint.

    Without a known mask the split accuracies and the noisy part are NaN, never a split
    of all examples into "clean".

    Example::

        step = checkpoint_dynamics(model, RunData.build(data, labels, device), groups, mask_known=True)
        step.accuracies.noisy_train_acc
    """
    accs, loss, pred = data.evaluate(model, batch_size)
    stats = checkpoint_gradients(model, data, groups) if groups is not None else None
    if not mask_known:
        nan = math.nan
        accs = Accuracies(nan, nan, nan, accs.test_acc)
        if stats is not None:
            blank = [nan] * len(stats.cosine)
            stats = GroupGradientStats(blank, list(blank), list(blank))
    return CheckpointDynamics(loss, pred, accs, stats)
