"""Example-tied dropout: route each training example's memorization to units chosen for it.

After Maini et al. 2023 ("Can Neural Network Memorization Be Localized?", ICML, Sec. 6).
In every chosen layer group a fraction ``p_gen`` of the units are *generalization units*,
active for every example. Each training example is also tied to its own *memorization
units*: each remaining unit is one of them with probability ``p_mem``. An example is
trained with only its generalization units and its memorization units active, so what
only that example needs (a wrong label) can be fitted only in its own units; at test
time the memorization units are dropped and the network runs on the shared units.

How memloc draws the masks (its own design, not the reference code's):

- Nothing per example is stored. A unit's membership is a counter-based hash of
  (seed, group, example id, unit) compared with ``p_mem``, computed for a batch when it
  is needed. So a mask does not depend on how examples are batched or ordered, a
  resumed run sees the same masks, and memory stays O(batch x units); the reference
  code keeps a dense N x C x H x W mask tensor, which is its known memory defect.
- The generalization units are a seeded subset of exactly round(p_gen * units) units
  (the reference takes the first channels), the same for every example.
- An example's id is its position in the run's training set (0..N-1). Test examples,
  which are tied to no units, take the ids after the last training example when they
  are run "as in training": an untied random draw of memorization units.
- Masks multiply whole units (channels, features, attention heads or token features),
  through `scale_units` at each group's site, so every layout a card declares works.

Scaling: none. Training multiplies by the 0/1 mask only, with no inverted-dropout
rescaling, as the reference does: a per-example factor would differ between examples
with the size of their Bernoulli draw, and the generalization units, which carry what
every example shares, would be scaled differently for each. The test-time drop zeroes
the memorization units and leaves the generalization units as they are, the same
intervention as zeroing units in the flip search (`locate neurons --mode mask`), so
the two analyses speak of one thing. (The reference's drop mode also multiplies the
generalization units by (p_fixed + p_mem) / p_fixed; with ReLU networks a common
positive factor on a group changes the output only through the biases and
normalization after it.)
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from memloc.core.adapters import ClassifierAdapter, LayerGroup
from memloc.core.classifier.units import scale_units
from memloc.core.errors import MemlocError
from memloc.core.hooks import patch
from memloc.core.sites import Site
from memloc.core.validation import fail, finite, in_unit_interval
from torch import nn

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
_GENERAL, _TIED = 0, 1  # hash domains: the shared subset, and the per-example draws


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` for x in [0, 2**32), in int64 without overflow (c split in 16-bit halves)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _fmix(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finalizer: every input bit flips each output bit with probability ~1/2."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def _combine(h: torch.Tensor, key: torch.Tensor | int) -> torch.Tensor:
    """Hash ``key`` (in [0, 2**32)) into the running hash ``h``; broadcasts like ``h ^ key``."""
    k = _fmix((torch.as_tensor(key, dtype=torch.int64, device=h.device) + _GOLDEN) & _M32)
    return _fmix(((h ^ k) + _GOLDEN) & _M32)


def unit_hash(seed: int, group: int, domain: int, ids: torch.Tensor, units: int) -> torch.Tensor:
    """A 32-bit hash per (id, unit): a (len(ids), units) int64 tensor on the ids' device."""
    h = torch.tensor((seed ^ (seed >> 32)) & _M32, dtype=torch.int64, device=ids.device)
    h = _combine(_combine(h, group), domain)
    rows = _combine(h, ids.to(torch.int64).reshape(-1, 1))
    return _combine(rows, torch.arange(units, device=ids.device).reshape(1, -1))


@dataclass(frozen=True)
class EtdConfig:
    """Example-tied dropout settings, stored in the run's TrainConfig.

    ``p_gen``: share of each group's units shared by all examples. ``p_mem``: chance that
    each remaining unit is one of an example's memorization units. ``layers``: the groups
    to tie (None: every group but the last, the classifier head). The defaults are those
    of the reference code's ResNet-50 (p_fixed 0.5, p_mem 0.2).
    """

    p_gen: float = 0.5
    p_mem: float = 0.2
    layers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        finite(self, "p_gen", "p_mem")
        in_unit_interval(self, "p_gen", "p_mem")
        if not 0 < self.p_mem < 1:
            raise fail(
                self,
                "p_mem",
                f"must lie strictly between 0 and 1 (0 ties no unit, 1 ties every unit to every example), got {self.p_mem}",
            )
        if self.layers is not None and not self.layers:
            raise fail(self, "layers", "must name at least one layer group")
        if self.layers is not None and len(set(self.layers)) != len(self.layers):
            raise fail(self, "layers", f"lists a layer group twice: {', '.join(self.layers)}")

    @classmethod
    def from_dict(cls, d: dict) -> EtdConfig:
        layers = d.get("layers")
        return cls(float(d["p_gen"]), float(d["p_mem"]), tuple(layers) if layers is not None else None)


@dataclass(frozen=True, eq=False)
class TiedGroup:
    """One tied layer group: its site, and which of its units are generalization units."""

    index: int
    group: LayerGroup
    general: torch.Tensor  # bool (units,), on the CPU

    @property
    def n_general(self) -> int:
        return int(self.general.sum())


def _general_units(seed: int, index: int, units: int, p_gen: float) -> torch.Tensor:
    """The round(p_gen * units) units with the smallest hashes: a seeded subset, fixed per group."""
    ranks = unit_hash(seed, index, _GENERAL, torch.zeros(1, dtype=torch.int64), units)[0]
    chosen = torch.argsort(ranks, stable=True)[: round(p_gen * units)]
    general = torch.zeros(units, dtype=torch.bool)
    general[chosen] = True
    return general


def _check_layout(config: EtdConfig, group: LayerGroup, n_general: int) -> None:
    """Refuse a group where the fractions leave no shared units or under one tied unit per example."""
    rest = group.units - n_general
    where = f"example-tied dropout: layer {group.name} has {group.units} units"
    if n_general == 0:
        raise MemlocError(
            f"{where}; p_gen {config.p_gen} leaves no generalization unit; raise p_gen", field="p_gen"
        )
    if rest == 0:
        raise MemlocError(
            f"{where}; p_gen {config.p_gen} leaves no memorization unit; lower p_gen", field="p_gen"
        )
    if config.p_mem * rest < 1:
        raise MemlocError(
            f"{where}, {rest} of them not shared; p_mem {config.p_mem} of those is {config.p_mem * rest:.2f} "
            "memorization units per example (fewer than 1); raise p_mem",
            field="p_mem",
        )


@dataclass(frozen=True, eq=False)
class EtdLayout:
    """Example-tied dropout resolved against a model's layer groups.

    Example::

        layout = EtdLayout.build(EtdConfig(), adapter, seed=0)
        with layout.tied(model, ids):      # train-time masks of the examples ``ids``
            logits = model(x[ids])
        with layout.dropped(model):        # memorization units dropped
            logits = model(x_test)
    """

    adapter: ClassifierAdapter
    config: EtdConfig
    seed: int
    groups: tuple[TiedGroup, ...]

    @classmethod
    def build(cls, config: EtdConfig, adapter: ClassifierAdapter, seed: int) -> EtdLayout:
        """Resolve ``config.layers`` and draw the generalization units; bad layouts are one line."""
        head = adapter.groups[-1].name
        names = config.layers if config.layers is not None else tuple(adapter.names[:-1])
        if not names:
            raise MemlocError(f"example-tied dropout needs a layer group before the head {head!r}")
        tied = []
        for name in names:
            group = adapter.group(name)
            if group.name == head:
                raise MemlocError(
                    f"layer {head} is the classifier head (its units are the class logits); "
                    "example-tied dropout ties hidden units"
                )
            index = adapter.groups.index(group)
            general = _general_units(seed, index, group.units, config.p_gen)
            _check_layout(config, group, int(general.sum()))
            tied.append(TiedGroup(index, group, general))
        return cls(adapter, config, seed, tuple(tied))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.group.name for t in self.groups)

    def memorization(self, tied: TiedGroup, ids: torch.Tensor) -> torch.Tensor:
        """Bool (len(ids), units): each example's memorization units in the group."""
        draw = unit_hash(self.seed, tied.index, _TIED, ids, tied.group.units)
        threshold = round(self.config.p_mem * 2**32)
        return (draw < threshold) & ~tied.general.to(ids.device)

    def masks(self, tied: TiedGroup, ids: torch.Tensor) -> torch.Tensor:
        """Bool (len(ids), units): the units active for each example in training."""
        return self.memorization(tied, ids) | tied.general.to(ids.device)

    def tied(self, model: nn.Module, ids: torch.Tensor) -> AbstractContextManager[object]:
        """Run the body's forward passes with each example's train-time units; row i is example ``ids[i]``."""

        def masked(tied: TiedGroup) -> Callable[[torch.Tensor], torch.Tensor]:
            masks = self.masks(tied, ids)
            return lambda act: scale_units(act, masks.to(act.device), tied.group)

        return patch(model, self.adapter, {Site(t.index, "out"): masked(t) for t in self.groups})

    def dropped(self, model: nn.Module) -> AbstractContextManager[object]:
        """Run the body's forward passes with every memorization unit zeroed (the test-time drop)."""

        def drop(tied: TiedGroup) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda act: scale_units(act, tied.general.to(act.device), tied.group)

        return patch(model, self.adapter, {Site(t.index, "out"): drop(t) for t in self.groups})

    def tied_chunks(
        self, model: nn.Module, offset: int = 0
    ) -> Callable[[torch.Tensor], AbstractContextManager]:
        """A per-chunk context for batched evaluation: chunk positions p are example ids ``offset + p``."""
        return lambda positions: self.tied(model, positions + offset)

    def dropped_chunks(self, model: nn.Module) -> Callable[[torch.Tensor], AbstractContextManager]:
        """The same for the test-time drop, which is one mask for every example."""
        return lambda _positions: self.dropped(model)
