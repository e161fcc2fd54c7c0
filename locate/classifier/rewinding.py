"""Layer rewinding and layer retraining (Maini et al. 2023, "Can Neural Network
Memorization Be Localized?", ICML, Sec. 3).

Rewinding: replace one layer group of the final model with its weights from an
early epoch and measure clean, noisy and test accuracy. If memorization lived in
one layer, rewinding that layer would erase the noisy examples' fit while the
clean ones stay. BatchNorm buffers follow the parameters by default (the
reference code leaves them at their final values).

Retraining: reset one group to its initialization, freeze every other parameter
for real (``requires_grad=False`` on the module's own parameters, and other
BatchNorm layers in eval mode so their buffers stay put), and train that group on
the CLEAN examples only. The reference code freezes copies and trains on the
noisy examples; neither is copied here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from memloc.core.adapters import ClassifierAdapter
from memloc.core.classifier.splits import Accuracies, RunData
from memloc.core.progress import Progress
from memloc.core.validation import at_least, fail, positive
from torch import nn


@dataclass(frozen=True)
class LayerCell:
    """Accuracies of the final model with one layer group rewound (or retrained) to ``epoch``.

    Example::

        cell = LayerCell.from_dict({"layer": "fc1", "epoch": 0, "clean_acc": 0.9, "noisy_acc": 0.1,
                                    "noisy_orig_acc": 0.7, "test_acc": 0.8})
    """

    layer: str
    epoch: int
    clean_acc: float
    noisy_acc: float  # mislabeled examples, on their given (wrong) labels
    noisy_orig_acc: float
    test_acc: float

    @classmethod
    def of(cls, layer: str, epoch: int, accs: Accuracies) -> LayerCell:
        return cls(layer, epoch, **accs.table_row())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerCell:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class GradientRow:
    """Mean per-step gradient norms of the clean and noisy parts of one epoch's batch losses."""

    layer: str
    epoch: int
    clean_norm: float
    noisy_norm: float
    cosine: float | None  # None where no batch had both parts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GradientRow:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class RewindConfig:
    """Which epochs to rewind to, and whether BatchNorm buffers follow the parameters."""

    epochs: tuple[int, ...]
    bn_buffers: bool = True
    batch_size: int = 1024

    def __post_init__(self) -> None:
        if not self.epochs or min(self.epochs) < 0:
            raise fail(self, "epochs", f"must name at least one epoch, none negative, got {self.epochs}")
        at_least(self, 1, "batch_size")


@dataclass(frozen=True)
class RetrainConfig:
    """Retraining one group on clean examples: at most ``epochs``, early stop after
    ``patience`` epochs at 100% clean-train accuracy."""

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 128
    patience: int = 3
    seed: int = 0
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        at_least(self, 1, "epochs", "batch_size", "eval_batch_size")
        at_least(self, 0, "patience", "seed")
        positive(self, "lr")


def default_rewind_epochs(final_epoch: int, count: int = 5) -> tuple[int, ...]:
    """Epoch 0 plus about ``count`` epochs spread over the first half of training."""
    half = final_epoch // 2
    picks = {0} | {max(1, round(half * (i + 1) / count)) for i in range(count)} if half else {0}
    return tuple(sorted(e for e in picks if e <= final_epoch))


def group_tensors(
    adapter: ClassifierAdapter,
    group: str,
    state: dict[str, torch.Tensor],
    bn_buffers: bool,
    parameter_names: Iterable[str],
) -> list[str]:
    """The state keys rewound for a group: its parameters, plus its buffers if asked."""
    names = set(parameter_names)
    return [k for k in adapter.group_keys(group, state) if bn_buffers or k in names]


@contextmanager
def rewound(
    model: nn.Module,
    adapter: ClassifierAdapter,
    layers: Iterable[str],
    source: dict[str, torch.Tensor],
    bn_buffers: bool = True,
) -> Iterator[nn.Module]:
    """Within the block, ``layers`` of ``model`` hold their tensors from ``source``.

    Only those tensors are copied in place, and they are restored exactly on exit.
    """
    state = model.state_dict()  # references to the live tensors
    params = [n for n, _ in model.named_parameters()]
    keys = [k for layer in layers for k in group_tensors(adapter, layer, state, bn_buffers, params)]
    saved = {k: state[k].clone() for k in keys}
    try:
        with torch.no_grad():
            for k in keys:
                state[k].copy_(source[k])
        yield model
    finally:
        with torch.no_grad():
            for k in keys:
                state[k].copy_(saved[k])


def rewind_cells(
    model: nn.Module,
    adapter: ClassifierAdapter,
    data: RunData,
    checkpoints: Callable[[int], dict[str, torch.Tensor]],
    config: RewindConfig,
    *,
    skip: Callable[[str, int], bool] = lambda layer, epoch: False,
    on_cell: Callable[[LayerCell], None] | None = None,
    progress: Progress | None = None,
) -> list[LayerCell]:
    """Rewind each (group, epoch) cell in place, evaluate, and restore the group.

    ``model`` holds the final weights and stays on its device; each epoch's
    checkpoint is read once, and only the group's tensors are copied per cell, so a
    cell costs one evaluation pass. The model is bit-identical afterwards.
    """
    device = next(model.parameters()).device
    todo = [(g.name, e) for e in config.epochs for g in adapter.groups if not skip(g.name, e)]
    cells: list[LayerCell] = []
    loaded: tuple[int, dict[str, torch.Tensor]] | None = None
    for done, (layer, epoch) in enumerate(todo):
        if loaded is None or loaded[0] != epoch:  # epoch-major order: one checkpoint in memory
            loaded = (epoch, {k: v.to(device) for k, v in checkpoints(epoch).items()})
        with rewound(model, adapter, [layer], loaded[1], config.bn_buffers):
            cell = LayerCell.of(layer, epoch, data.accuracies(model, config.batch_size))
        cells.append(cell)
        if on_cell:
            on_cell(cell)
        if progress:
            progress(done + 1, len(todo), f"rewind {layer} to epoch {epoch}")
    return cells


def _set_trainable(model: nn.Module, adapter: ClassifierAdapter, layer: str) -> list[nn.Parameter]:
    """Freeze every parameter outside the group; only the group's modules train."""
    group = adapter.group(layer)
    model.eval()
    for module_name, module in model.named_modules():
        if any(module_name == p or module_name.startswith(p + ".") for p in group.prefixes):
            module.train()
    trainable = adapter.group_parameters(model, layer)
    ids = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    return trainable


def retrain_group(
    model: nn.Module,
    adapter: ClassifierAdapter,
    data: RunData,
    init: dict[str, torch.Tensor],
    layer: str,
    config: RetrainConfig,
    *,
    progress: Callable[[int], None] | None = None,
) -> list[LayerCell]:
    """Reset ``layer`` to ``init`` and train it alone on the clean examples.

    Works on ``model`` in place (pass a copy). Returns one row per epoch, epoch 0
    being the reset model before any training.
    """
    state = model.state_dict()
    keys = adapter.group_keys(layer, state)
    with torch.no_grad():
        for k in keys:
            state[k].copy_(init[k].to(state[k].device))
    trainable = _set_trainable(model, adapter, layer)
    optimizer = torch.optim.Adam(trainable, lr=config.lr)
    clean = torch.nonzero(~data.noisy).squeeze(1)
    accs = data.accuracies(model, config.eval_batch_size)
    rows = [LayerCell.of(layer, 0, accs)]
    perfect = 0
    generator = torch.Generator().manual_seed(config.seed)
    steps = math.ceil(len(clean) / config.batch_size)
    for epoch in range(1, config.epochs + 1):
        _set_trainable(model, adapter, layer)
        order = clean[torch.randperm(len(clean), generator=generator).to(clean.device)]
        for idx in torch.tensor_split(order, steps):
            loss = F.cross_entropy(model(data.x_train[idx]).float(), data.given[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        accs = data.accuracies(model, config.eval_batch_size)
        rows.append(LayerCell.of(layer, epoch, accs))
        if progress:
            progress(epoch)
        perfect = perfect + 1 if accs.clean_train_acc == 1.0 else 0
        if perfect >= config.patience:
            break
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return rows


def gradient_rows(groups: Sequence[str], clean, noisy, cosine) -> list[GradientRow]:
    """Gradient accounting from a run's dynamics, one row per (epoch, layer group)."""
    rows = []
    for e in range(len(clean)):
        for g, name in enumerate(groups):
            cos = float(cosine[e, g])
            rows.append(
                GradientRow(
                    layer=name,
                    epoch=e + 1,
                    clean_norm=float(clean[e, g]),
                    noisy_norm=float(noisy[e, g]),
                    cosine=None if math.isnan(cos) else cos,
                )
            )
    return rows
