"""The fewest units whose removal flips a training example's prediction.

After Maini et al. 2023 ("Can Neural Network Memorization Be Localized?", ICML,
Sec. 4): for a target example i with given label y_i and a reference batch R of
clean training examples, the objective is

    J = mean_{j in R} CE_j - CE_i        (raise the target's loss, keep the batch)

Every candidate unit (a conv output channel or a linear output feature) carries a
multiplicative mask m = 1. Zeroing unit u moves m_u by -1, so to first order J
drops by dJ/dm_u: that is the unit's gain. The search zeroes the unit with the
largest positive gain, recomputes, and stops when the prediction leaves y_i.

Beyond the paper and its code, memloc adds:
- a cap on units and a collateral budget: accuracy on a held-out clean set (a
  seeded subset of the test set) may drop by at most ``collateral`` points; a unit
  that breaks the budget is put back and banned for that example;
- a prune pass that makes the final set minimal: restoring any single unit
  un-flips the example (or, rarely, would break the collateral budget);
- a distinct, seeded reference batch per example (the reference code reuses one);
- many targets per forward pass, each with its own mask row.

Modes: ``mask`` masks the block's output (after normalization and activation).
``weights`` zeroes the unit's own weights and bias, as the reference code does;
it is searched through a mask on the conv/linear output before normalization,
which is the same function (the output is linear in those weights), and every
found set is checked again with the weights really zeroed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from memloc.core.adapters import ClassifierAdapter
from memloc.core.errors import MemlocError
from memloc.core.hooks import patch
from memloc.core.sites import Site
from torch import nn

MODES = ("mask", "weights")


@dataclass(frozen=True)
class FlipConfig:
    max_units: int = 500
    collateral: float = 5.0  # accuracy points on the held-out clean set
    mode: str = "mask"
    reference_size: int = 32
    holdout_size: int = 500
    include_head: bool = False
    batch_size: int = 32  # target examples per forward pass
    prune: bool = True
    seed: int = 0

    def validate(self) -> None:
        if self.max_units < 1:
            raise MemlocError(f"--max-units must be at least 1, got {self.max_units}")
        if self.collateral < 0:
            raise MemlocError(f"--collateral must be non-negative, got {self.collateral}")
        if self.mode not in MODES:
            raise MemlocError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.batch_size < 1 or self.reference_size < 1 or self.holdout_size < 1:
            raise MemlocError("--batch, the reference size and the hold-out size must be at least 1")


@dataclass
class FlipResult:
    index: int
    flipped: bool
    units: list[tuple[str, int]]
    collateral_drop: float
    steps: int
    reason: str
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FlipData:
    """Where targets, reference batches and the hold-out set come from (all on one device)."""

    x: torch.Tensor  # training inputs
    y: torch.Tensor  # given labels
    clean: torch.Tensor  # indices of clean training examples (reference pool)
    x_hold: torch.Tensor
    y_hold: torch.Tensor

    def reference(self, target: int, size: int, seed: int) -> torch.Tensor:
        """A seeded reference batch for one target, independent of how targets are batched."""
        generator = torch.Generator().manual_seed(seed * 1_000_003 + target)
        pool = self.clean[self.clean != target]
        pick = torch.randperm(len(pool), generator=generator)[:size].to(pool.device)
        return pool[pick]


class UnitSpace:
    """Candidate units of a classifier, flattened: flat index <-> (layer, unit)."""

    def __init__(self, adapter: ClassifierAdapter, mode: str, include_head: bool) -> None:
        groups = list(adapter.groups)
        if not include_head:
            groups = groups[:-1]
        if not groups:
            raise MemlocError("the model has no candidate layers besides its head; pass include_head")
        kind = "out" if mode == "mask" else "pre"
        self.adapter = adapter
        self.layers = [g.name for g in groups]
        self.sites = [Site(adapter.names.index(g.name), kind) for g in groups]
        self.sizes = [g.units for g in groups]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).tolist()
        self.total = self.offsets[-1]

    def unit(self, flat: int) -> tuple[str, int]:
        layer = int(np.searchsorted(self.offsets, flat, side="right") - 1)
        return self.layers[layer], flat - self.offsets[layer]

    def flat(self, layer: str, unit: int) -> int:
        return self.offsets[self.layers.index(layer)] + unit

    @contextmanager
    def masked(self, model: nn.Module, masks: torch.Tensor) -> Iterator[None]:
        """Multiply each example's units by its row of ``masks`` (N, total) in the body."""

        def scale(offset: int, size: int) -> Callable[[torch.Tensor], torch.Tensor]:
            def fn(act: torch.Tensor) -> torch.Tensor:
                m = masks[:, offset : offset + size].to(act.dtype)
                return act * m.view(*m.shape, *([1] * (act.dim() - 2)))

            return fn

        fns = {site: scale(self.offsets[i], self.sizes[i]) for i, site in enumerate(self.sites)}
        with patch(model, self.adapter, fns):
            yield


@contextmanager
def zeroed_weights(
    model: nn.Module, adapter: ClassifierAdapter, units: Sequence[tuple[str, int]]
) -> Iterator[None]:
    """Zero each unit's own weights and bias in place; restore them exactly on exit."""
    saved = []
    try:
        with torch.no_grad():
            for layer, unit in units:
                for tensor, dim in adapter.unit_weights(model, layer):
                    row = tensor.select(dim, unit)
                    saved.append((row, row.clone()))
                    row.zero_()
        yield
    finally:
        with torch.no_grad():
            for row, value in reversed(saved):
                row.copy_(value)


def _holdout_accuracy(
    model: nn.Module, space: UnitSpace, data: FlipData, masks: torch.Tensor
) -> torch.Tensor:
    """Hold-out accuracy under each row of ``masks`` (K, total): K x |hold| examples, one pass."""
    k, n = masks.shape[0], len(data.x_hold)
    x = data.x_hold.repeat(k, *([1] * (data.x_hold.dim() - 1)))
    rows = torch.arange(k, device=masks.device).repeat_interleave(n)
    with torch.no_grad(), space.masked(model, masks[rows]):
        pred = model(x).argmax(1).view(k, n)
    return (pred == data.y_hold).float().mean(1)


def _predict(model: nn.Module, space: UnitSpace, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), space.masked(model, masks):
        return model(x).argmax(1)


def _drop(model: nn.Module, space: UnitSpace, data: FlipData, units: list[int], base_hold: float) -> float:
    """Hold-out accuracy points lost with ``units`` zeroed."""
    mask = torch.ones(1, space.total, device=data.x.device)
    mask[0, units] = 0
    return 100 * (base_hold - float(_holdout_accuracy(model, space, data, mask)[0]))


def _prune(
    model: nn.Module,
    space: UnitSpace,
    data: FlipData,
    target: int,
    units: list[int],
    drop: float,
    config: FlipConfig,
    base_hold: float,
) -> tuple[list[int], float]:
    """Restore units while the example stays flipped and within the collateral budget.

    On return, restoring any single remaining unit either un-flips the example or
    breaks the budget: the set is minimal.
    """
    units = list(units)
    x, y = data.x[target : target + 1], int(data.y[target])
    while len(units) > 1:
        k = len(units)
        masks = torch.ones(k, space.total, device=x.device)
        for row in range(k):
            masks[row, [u for j, u in enumerate(units) if j != row]] = 0
        pred = _predict(model, space, x.expand(k, *x.shape[1:]), masks)
        # restorations that keep the flip, tried in order; the first within budget wins
        # (usually the first one tried, so one hold-out pass per round)
        for row in (pred != y).nonzero().flatten().tolist():
            rest = units[:row] + units[row + 1 :]
            rest_drop = _drop(model, space, data, rest, base_hold)
            if rest_drop <= config.collateral:
                units, drop = rest, rest_drop
                break
        else:
            break
    return units, drop


def flip_search(
    model: nn.Module,
    adapter: ClassifierAdapter,
    data: FlipData,
    targets: Sequence[int],
    config: FlipConfig,
    *,
    on_result: Callable[[FlipResult], None] | None = None,
) -> list[FlipResult]:
    """Greedy flip search for every target, ``config.batch_size`` targets per forward pass.

    The model must be in eval mode; it is left exactly as it came (hooks removed,
    weights restored).
    """
    config.validate()
    if model.training:
        raise MemlocError("flip search needs the model in eval mode (BatchNorm must use running statistics)")
    space = UnitSpace(adapter, config.mode, config.include_head)
    device = data.x.device
    base_hold = float(_holdout_accuracy(model, space, data, torch.ones(1, space.total, device=device))[0])
    results: list[FlipResult] = []
    for start in range(0, len(targets), config.batch_size):
        chunk = list(targets[start : start + config.batch_size])
        for result in _search_chunk(model, space, data, chunk, config, base_hold):
            if config.mode == "weights":
                _check_with_weights(model, adapter, data, result, base_hold)
            results.append(result)
            if on_result:
                on_result(result)
    return results


def _search_chunk(
    model: nn.Module, space: UnitSpace, data: FlipData, chunk: list[int], config: FlipConfig, base_hold: float
) -> list[FlipResult]:
    device = data.x.device
    b, r = len(chunk), config.reference_size
    idx = torch.tensor(chunk, device=device)
    refs = torch.stack([data.reference(t, r, config.seed) for t in chunk])  # (b, r')
    r = refs.shape[1]
    x_all = torch.cat([data.x[idx], data.x[refs.flatten()]])
    y_all = torch.cat([data.y[idx], data.y[refs.flatten()]])
    row_of = torch.cat([torch.arange(b, device=device), torch.arange(b, device=device).repeat_interleave(r)])
    zeroed = torch.zeros(b, space.total, dtype=torch.bool, device=device)
    banned = torch.zeros_like(zeroed)
    order: list[list[int]] = [[] for _ in range(b)]
    outcome: dict[int, FlipResult] = {}
    steps = [0] * b
    spent = [0.0] * b  # each pass's time is split among the targets it served
    while len(outcome) < b:
        tick = time.perf_counter()
        active = [i for i in range(b) if i not in outcome]
        act = torch.tensor(active, device=device)
        # examples of the active targets: their own rows first, then their reference batches
        keep = torch.isin(row_of, act)
        masks = (~zeroed[active]).float().requires_grad_(True)
        remap = torch.full((b,), -1, dtype=torch.long, device=device)
        remap[act] = torch.arange(len(active), device=device)
        rows = remap[row_of[keep]]
        with space.masked(model, masks[rows]):
            logits = model(x_all[keep])
        ce = F.cross_entropy(logits.float(), y_all[keep], reduction="none")
        n = len(active)
        objective = ce[n:].view(n, r).mean(1) - ce[:n]
        (gain,) = torch.autograd.grad(objective.sum(), masks)
        pred = logits[:n].argmax(1)
        for j, i in enumerate(active):
            if pred[j] != y_all[i]:
                drop = 100 * (
                    base_hold - float(_holdout_accuracy(model, space, data, (~zeroed[i]).float()[None])[0])
                )
                if drop <= config.collateral:
                    outcome[i] = _finish(
                        model, space, data, chunk[i], order[i], drop, steps[i], config, base_hold
                    )
                    continue
                # over budget: put the last unit back and never try it again for this example
                last = order[i].pop()
                zeroed[i, last] = False
                banned[i, last] = True
                continue
            if len(order[i]) >= config.max_units:
                outcome[i] = FlipResult(
                    chunk[i], False, [space.unit(u) for u in order[i]], float("nan"), steps[i], "cap"
                )
                continue
            g = gain[j].masked_fill(zeroed[i] | banned[i], float("-inf"))
            best = int(g.argmax())
            if not g[best] > 0:
                outcome[i] = FlipResult(
                    chunk[i],
                    False,
                    [space.unit(u) for u in order[i]],
                    float("nan"),
                    steps[i],
                    "no unit lowers J",
                )
                continue
            zeroed[i, best] = True
            order[i].append(best)
            steps[i] += 1
        share = (time.perf_counter() - tick) / len(active)
        for i in active:
            spent[i] += share
    results = [outcome[i] for i in range(b)]
    for i, result in enumerate(results):
        result.seconds = spent[i]
    return results


def _finish(
    model: nn.Module,
    space: UnitSpace,
    data: FlipData,
    target: int,
    units: list[int],
    drop: float,
    steps: int,
    config: FlipConfig,
    base_hold: float,
) -> FlipResult:
    if config.prune and len(units) > 1:
        units, drop = _prune(model, space, data, target, units, drop, config, base_hold)
    if not units:
        return FlipResult(target, False, [], 0.0, steps, "already mispredicted")
    return FlipResult(target, True, sorted(space.unit(u) for u in units), drop, steps, "flipped")


def _check_with_weights(
    model: nn.Module, adapter: ClassifierAdapter, data: FlipData, result: FlipResult, base_hold: float
) -> None:
    """Weight mode: confirm the flip and measure collateral with the weights really zeroed."""
    if not result.flipped or not result.units:
        return
    with zeroed_weights(model, adapter, result.units), torch.no_grad():
        pred = int(model(data.x[result.index : result.index + 1]).argmax(1))
        hold = float((model(data.x_hold).argmax(1) == data.y_hold).float().mean())
    result.extra["weights_collateral_drop"] = 100 * (base_hold - hold)
    if pred == int(data.y[result.index]):
        result.flipped = False
        result.reason = "weight check failed"
