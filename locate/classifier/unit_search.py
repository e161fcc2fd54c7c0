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
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from memloc.core.adapters import ClassifierAdapter, LayerGroup
from memloc.core.classifier.conv_layout import channels_last_on_cpu
from memloc.core.classifier.gradients import frozen_parameters
from memloc.core.classifier.splits import RunData
from memloc.core.classifier.units import scale_units
from memloc.core.errors import MemlocError
from memloc.core.hooks import patch
from memloc.core.sites import Site
from memloc.core.validation import at_least, one_of
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
    heads: bool = False  # also search attention heads (models whose card has them)
    batch_size: int = 32  # target examples per forward pass
    prune: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        at_least(self, 1, "max_units")
        at_least(self, 0, "collateral", "seed")
        one_of(self, "mode", MODES)
        at_least(self, 1, "batch_size", "reference_size", "holdout_size")


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

    @classmethod
    def from_run(cls, data: RunData, holdout_size: int, seed: int) -> FlipData:
        """Targets from the run's training set; the hold-out set is a seeded subset of its test set."""
        pick = torch.randperm(len(data.x_test), generator=torch.Generator().manual_seed(seed))[:holdout_size]
        pick = pick.to(data.x_test.device)
        clean = torch.nonzero(~data.noisy).flatten()
        return cls(data.x_train, data.given, clean, data.x_test[pick], data.y_test[pick])

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
        self.groups = groups
        self.layers = [g.name for g in groups]
        self.sites = [Site(adapter.names.index(g.name), kind) for g in groups]
        # The layout where the masks apply: the group's output, or its unit layer's output.
        self.layouts = groups if mode == "mask" else [g.at_pre() for g in groups]
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

        def scale(offset: int, group: LayerGroup) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda act: scale_units(act, masks[:, offset : offset + group.units], group)

        fns = {site: scale(self.offsets[i], self.layouts[i]) for i, site in enumerate(self.sites)}
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
                size = adapter.group(layer).unit_size  # a head owns head_dim rows
                for tensor, dim in adapter.unit_weights(model, layer):
                    row = tensor.narrow(dim, unit * size, size)
                    saved.append((row, row.clone()))
                    row.zero_()
        yield
    finally:
        with torch.no_grad():
            for row, value in reversed(saved):
                row.copy_(value)


def _predict(model: nn.Module, space: UnitSpace, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), space.masked(model, masks):
        return model(x).argmax(1)


@dataclass
class _Suspects:
    """How often each hold-out example was wrong under one target's rejected unit sets.

    While a hard example churns through banned units, its candidate sets share all
    but one unit, so they tend to break the same hold-out examples. Scoring the
    most often broken ones first lets a rejection stop after about the budget's
    worth of examples instead of a large part of the hold-out set. Only the order
    changes, never a decision.
    """

    counts: torch.Tensor | None = None  # (n,) times wrong in a rejected set


def _drop(
    model: nn.Module,
    space: UnitSpace,
    data: FlipData,
    units: list[int],
    base_hold: int,
    budget: float = float("inf"),
    suspects: _Suspects | None = None,
) -> float:
    """Hold-out accuracy points lost with ``units`` zeroed; +inf once it surely exceeds ``budget``.

    The hold-out set (sorted by margin, smallest first, after any ``suspects``) is
    scored in growing chunks, and scoring stops as soon as the errors so far already
    break the budget: rejected units (the common case while a hard example searches)
    then cost a fraction of a pass. Accepted sets get the exact drop, so the
    decision is the same as scoring everything.
    """
    n = len(data.x_hold)
    mask = torch.ones(1, space.total, device=data.x.device)
    mask[0, units] = 0
    # base_hold counts the unmasked model's correct hold-out predictions; the most
    # errors that keep the drop, 100 * (base_hold - correct) / n, within the budget:
    allowed = max((w for w in range(n + 1) if 100 * (base_hold - (n - w)) / n <= budget), default=-1)
    order = torch.arange(n, device=data.x.device)
    if suspects is not None and suspects.counts is not None:
        # most often broken first; ties keep the margin order (the sort is stable)
        order = torch.sort(-suspects.counts, stable=True).indices
    wrong, found, start = 0, [], 0
    while start < n:
        # A rejection needs allowed + 1 errors, so the first chunk is that long; later
        # chunks are sized by how many errors are still missing.
        size = max(16, allowed + 1) if start == 0 else max(16, 2 * (allowed + 1 - wrong))
        idx = order[start : start + size]
        x = data.x_hold[idx]
        with torch.no_grad(), space.masked(model, mask.expand(len(x), -1)):
            miss = model(x).argmax(1) != data.y_hold[idx]
        wrong += int(miss.sum())
        found.append(idx[miss])
        start += size
        if wrong > allowed:
            if suspects is not None:
                if suspects.counts is None:
                    suspects.counts = torch.zeros(n, device=data.x.device)
                suspects.counts[torch.cat(found)] += 1
            return float("inf")
    return 100 * (base_hold - (n - wrong)) / n


def _drops(
    model: nn.Module,
    space: UnitSpace,
    data: FlipData,
    sets: list[list[int]],
    base_hold: int,
    budget: float,
    batched: bool | None = None,
    suspects: Sequence[_Suspects] | None = None,
) -> list[float]:
    """`_drop` for several unit sets. On a GPU they share batched passes over the
    hold-out set; on a CPU, which is bound by arithmetic, each stops early instead."""
    if batched is None:
        batched = data.x.device.type != "cpu"
    if not batched or len(sets) < 2:
        found = suspects if suspects is not None else [None] * len(sets)
        return [
            _drop(model, space, data, units, base_hold, budget, hint)
            for units, hint in zip(sets, found, strict=True)
        ]
    n = len(data.x_hold)
    masks = torch.ones(len(sets), space.total, device=data.x.device)
    for row, units in enumerate(sets):
        masks[row, units] = 0
    per_pass = max(1, 8192 // n)
    correct = []
    with torch.no_grad():
        for start in range(0, len(sets), per_pass):
            block = masks[start : start + per_pass]
            k = len(block)
            x = data.x_hold.repeat(k, *([1] * (data.x_hold.dim() - 1)))
            with space.masked(model, block.repeat_interleave(n, 0)):
                hit = model(x).argmax(1).view(k, n) == data.y_hold
            correct += hit.sum(1).tolist()
    drops = [100 * (base_hold - c) / n for c in correct]
    return [d if d <= budget else float("inf") for d in drops]


def _prune(
    model: nn.Module,
    space: UnitSpace,
    data: FlipData,
    target: int,
    units: list[int],
    drop: float,
    config: FlipConfig,
    base_hold: int,
    suspects: _Suspects | None = None,
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
            rest_drop = _drop(model, space, data, rest, base_hold, config.collateral, suspects)
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

        results = flip_search(model.eval(), adapter, data, [3, 17], FlipConfig(max_units=100))
    """
    if model.training:
        raise MemlocError("flip search needs the model in eval mode (BatchNorm must use running statistics)")
    space = UnitSpace(adapter, config.mode, config.include_head)
    with frozen_parameters(model), channels_last_on_cpu(model):
        return _flip_search(model, adapter, space, data, targets, config, on_result)


def _flip_search(
    model: nn.Module,
    adapter: ClassifierAdapter,
    space: UnitSpace,
    data: FlipData,
    targets: Sequence[int],
    config: FlipConfig,
    on_result: Callable[[FlipResult], None] | None,
) -> list[FlipResult]:
    with torch.no_grad():
        logits = model(data.x_hold).float()
    base_hold = int((logits.argmax(1) == data.y_hold).sum())
    # Score the hold-out set from the smallest margin up: the examples a removal is
    # likeliest to break come first, so an over-budget set is rejected after fewer
    # chunks. Drops do not depend on the order.
    true = logits.gather(1, data.y_hold[:, None]).squeeze(1)
    margin = true - logits.scatter(1, data.y_hold[:, None], float("-inf")).amax(1)
    order = margin.argsort()
    data = replace(data, x_hold=data.x_hold[order], y_hold=data.y_hold[order])
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
    model: nn.Module, space: UnitSpace, data: FlipData, chunk: list[int], config: FlipConfig, base_hold: int
) -> list[FlipResult]:
    return _ChunkSearch(model, space, data, chunk, config, base_hold).run()


class _ChunkSearch:
    """The greedy search of one chunk of targets, batched: one gradient pass serves all
    active targets, and each target's own state (zeroed and banned units, steps, time)
    is a row of the arrays here.

    Search state lives on the CPU, so each step syncs with the device once.
    """

    def __init__(
        self,
        model: nn.Module,
        space: UnitSpace,
        data: FlipData,
        chunk: list[int],
        config: FlipConfig,
        base_hold: int,
    ) -> None:
        self.model, self.space, self.data, self.chunk = model, space, data, chunk
        self.config, self.base_hold = config, base_hold
        self.device = data.x.device
        b = self.b = len(chunk)
        refs = torch.stack([data.reference(t, config.reference_size, config.seed) for t in chunk])
        self.r = refs.shape[1]
        # rows: the b targets first, then each target's reference batch
        self.x_all = torch.cat([data.x[chunk], data.x[refs.flatten()]])
        self.y_all = torch.cat([data.y[chunk], data.y[refs.flatten()]])
        self.owner = np.concatenate([np.arange(b), np.repeat(np.arange(b), self.r)])
        self.targets_y = data.y[chunk].cpu().numpy()
        self.x_target = data.x[chunk]
        self.zeroed = np.zeros((b, space.total), dtype=bool)
        self.banned = np.zeros_like(self.zeroed)
        self.order: list[list[int]] = [[] for _ in range(b)]
        self.outcome: dict[int, FlipResult] = {}
        self.steps = [0] * b
        self.spent = [0.0] * b  # each pass's time is split among the targets it served
        self.previous: dict[int, np.ndarray] = {}  # gains at the state before each target's last zeroing
        self.suspects = [_Suspects() for _ in range(b)]
        self.own = 0.0  # time of the current pass spent on one target alone, charged to it only

    def run(self) -> list[FlipResult]:
        """Step every unfinished target once per pass until all are finished."""
        while len(self.outcome) < self.b:
            tick = time.perf_counter()
            active = np.array([i for i in range(self.b) if i not in self.outcome])
            gains, preds = self._gains(active)
            flipped_now = [i for j, i in enumerate(active) if preds[j] != self.targets_y[i]]
            drop_of = dict(zip(flipped_now, self._drops(flipped_now), strict=True))
            self.own = 0.0
            for j, i in enumerate(active):
                if i in drop_of:
                    # Finishes target i, or leaves it at a state that no longer flips, whose
                    # gains the next pass computes.
                    self.settle_rejections(i, drop_of[i])
                elif len(self.order[i]) >= self.config.max_units:
                    self.outcome[i] = self.stop(i, "cap")
                else:
                    self.previous[i] = gains[j]
                    self.zero_best(i, gains[j])
            share = (time.perf_counter() - tick - self.own) / len(active)
            for i in active:
                self.spent[i] += share
        results = [self.outcome[i] for i in range(self.b)]
        for i, result in enumerate(results):
            result.seconds = self.spent[i]
        return results

    def _gains(self, active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each active target's gain per unit (-inf where zeroed or banned), and its prediction."""
        n, device = len(active), self.device
        position = np.full(self.b, -1)
        position[active] = np.arange(n)
        keep = np.flatnonzero(position[self.owner] >= 0)  # targets first, in order, then references
        rows = torch.from_numpy(position[self.owner[keep]]).to(device)
        keep_t = torch.from_numpy(keep).to(device)
        masks = torch.from_numpy(~self.zeroed[active]).to(device, torch.float32).requires_grad_(True)
        allowed = torch.from_numpy(~(self.zeroed[active] | self.banned[active])).to(device)
        with self.space.masked(self.model, masks[rows]):
            logits = self.model(self.x_all[keep_t])
        ce = F.cross_entropy(logits.float(), self.y_all[keep_t], reduction="none")
        objective = ce[n:].view(n, self.r).mean(1) - ce[:n]
        (gain,) = torch.autograd.grad(objective.sum(), masks)
        gains = gain.masked_fill(~allowed, float("-inf")).cpu().numpy()
        return gains, logits[:n].argmax(1).cpu().numpy()

    def _drops(self, targets: list[int]) -> list[float]:
        """The collateral drop of each target's current set (+inf over budget)."""
        sets = [self.order[i] for i in targets]
        hints = [self.suspects[i] for i in targets]
        return _drops(
            self.model, self.space, self.data, sets, self.base_hold, self.config.collateral, suspects=hints
        )

    def stop(self, i: int, reason: str) -> FlipResult:
        units = [self.space.unit(u) for u in self.order[i]]
        return FlipResult(self.chunk[i], False, units, float("nan"), self.steps[i], reason)

    def zero_best(self, i: int, g: np.ndarray) -> bool:
        """Zero target i's unit of largest gain in ``g``; False (and stop) when none lowers J."""
        unit = int(np.argmax(g))
        if not g[unit] > 0:
            self.outcome[i] = self.stop(i, "no unit lowers J")
            return False
        self.zeroed[i, unit] = True
        self.order[i].append(unit)
        self.steps[i] += 1
        return True

    def settle_rejections(self, i: int, drop: float) -> None:
        """From a flipped state of target i: finish it, or reject units until the state
        stops flipping.

        Over budget, the last unit goes back and is never tried again for this
        example; the state is then the one whose gains were computed last, so the
        next unit comes from those gains. Whether that state flips needs only the
        target's own row, not a gradient pass over its reference batch, so a chain
        of rejections (the common case for hard examples) costs one small forward
        and one hold-out check per unit. The decisions are those of the batched
        loop, which would reach the same states one pass at a time.
        """
        model, space, data, config, base_hold = self.model, self.space, self.data, self.config, self.base_hold
        start = time.perf_counter()
        try:
            while True:
                if drop <= config.collateral:
                    self.outcome[i] = _finish(
                        model, space, data, self.chunk[i], self.order[i], drop, self.steps[i], config, base_hold,
                        self.suspects[i],
                    )  # fmt: skip
                    return
                last = self.order[i].pop()
                self.zeroed[i, last] = False
                self.banned[i, last] = True
                if not self.zero_best(
                    i, np.where(self.zeroed[i] | self.banned[i], -np.inf, self.previous[i])
                ):
                    return
                mask = torch.from_numpy(~self.zeroed[i : i + 1]).to(self.device, torch.float32)
                if int(_predict(model, space, self.x_target[i : i + 1], mask)[0]) == int(self.targets_y[i]):
                    return
                drop = _drop(
                    model, space, data, self.order[i], base_hold, config.collateral, self.suspects[i]
                )
        finally:
            self.spent[i] += time.perf_counter() - start
            self.own += time.perf_counter() - start


def _finish(
    model: nn.Module,
    space: UnitSpace,
    data: FlipData,
    target: int,
    units: list[int],
    drop: float,
    steps: int,
    config: FlipConfig,
    base_hold: int,
    suspects: _Suspects | None = None,
) -> FlipResult:
    if config.prune and len(units) > 1:
        units, drop = _prune(model, space, data, target, units, drop, config, base_hold, suspects)
    if not units:
        return FlipResult(target, False, [], 0.0, steps, "already mispredicted")
    return FlipResult(target, True, sorted(space.unit(u) for u in units), drop, steps, "flipped")


def _check_with_weights(
    model: nn.Module, adapter: ClassifierAdapter, data: FlipData, result: FlipResult, base_hold: int
) -> None:
    """Weight mode: confirm the flip and measure collateral with the weights really zeroed."""
    if not result.flipped or not result.units:
        return
    with zeroed_weights(model, adapter, result.units), torch.no_grad():
        pred = int(model(data.x[result.index : result.index + 1]).argmax(1))
        correct = int((model(data.x_hold).argmax(1) == data.y_hold).sum())
    result.extra["weights_collateral_drop"] = 100 * (base_hold - correct) / len(data.x_hold)
    if pred == int(data.y[result.index]):
        result.flipped = False
        result.reason = "weight check failed"
