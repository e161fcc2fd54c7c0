"""Architecture knowledge: which module each Site names, and which tensors form a layer.

This is the only file that knows module paths. Everything else speaks in Sites
(core/sites.py) and asks an adapter where they live.

Classifiers: a `ClassifierAdapter` wraps any `nn.Module` with an explicit, ordered
list of layer groups. Group i is addressed as ``Site(i, "out")``; its units are the
output channels of a conv layer or the output features of a linear layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .errors import MemlocError, UnsupportedModelError
from .sites import Site

HookIO = Literal["input", "output"]


@dataclass(frozen=True)
class HookPoint:
    """Where a site's activation is read or written: a module's input or output."""

    module: str
    io: HookIO


@dataclass(frozen=True)
class LayerGroup:
    """One layer group of a classifier.

    ``module`` is the path whose output holds the group's units; ``prefixes`` are the
    module paths whose parameters and buffers belong to the group (e.g. a conv and
    its BatchNorm), used when rewinding or retraining the group.
    """

    name: str
    module: str
    units: int
    unit_kind: Literal["channel", "feature"]
    prefixes: tuple[str, ...]
    unit_module: str = ""  # the conv/linear layer whose output channels are the units


class LayerNotFoundError(MemlocError):
    """A layer name or index that the model does not have."""


def _owns(prefix: str, key: str) -> bool:
    return prefix == "" or key == prefix or key.startswith(prefix + ".")


def _unit_layer(path: str, module: nn.Module) -> tuple[str, int, Literal["channel", "feature"]]:
    """The module's last conv or linear layer: its path, and its output channels or features."""
    last: tuple[str, nn.Module] | None = None
    for name, sub in module.named_modules():
        if isinstance(sub, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            last = (name, sub)
    if last is None:
        raise MemlocError(f"module {type(module).__name__} has no conv or linear layer to count units")
    name, layer = last
    full = f"{path}.{name}" if name else path
    if isinstance(layer, nn.Linear):
        return full, layer.out_features, "feature"
    return full, layer.out_channels, "channel"


class ClassifierAdapter:
    """Adapter over any classifier with an explicit ordered list of layer groups."""

    def __init__(self, groups: Sequence[LayerGroup]) -> None:
        if not groups:
            raise MemlocError("a classifier adapter needs at least one layer group")
        names = [g.name for g in groups]
        if len(set(names)) != len(names):
            raise MemlocError(f"layer group names must be unique, got {names}")
        self.groups: tuple[LayerGroup, ...] = tuple(groups)

    @classmethod
    def from_modules(
        cls,
        model: nn.Module,
        groups: Iterable[tuple[str, str] | tuple[str, str, Sequence[str]]],
    ) -> ClassifierAdapter:
        """Build from ``(name, module_path[, extra_param_prefixes])`` triples.

        Unit counts are read from the module (its last conv or linear layer).
        """
        modules = dict(model.named_modules())
        built = []
        for entry in groups:
            name, path = entry[0], entry[1]
            extra = tuple(entry[2]) if len(entry) > 2 else ()
            if path not in modules:
                raise LayerNotFoundError(f"module path {path!r} is not in the model")
            unit_module, units, kind = _unit_layer(path, modules[path])
            built.append(LayerGroup(name, path, units, kind, (path, *extra), unit_module))
        return cls(built)

    @classmethod
    def for_model(cls, model: nn.Module) -> ClassifierAdapter:
        """The adapter a zoo model declares through ``layer_groups()``."""
        declare = getattr(model, "layer_groups", None)
        if declare is None:
            raise UnsupportedModelError(
                f"{type(model).__name__} declares no layer groups; build a ClassifierAdapter "
                "with ClassifierAdapter.from_modules(model, [(name, module_path), ...])"
            )
        return cls.from_modules(model, declare())

    # --- addressing -------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def group(self, key: str | int | Site) -> LayerGroup:
        """A group by name, index, or ``Site(i, "out")``."""
        if isinstance(key, Site):
            key = key.layer
        if isinstance(key, int):
            if 0 <= key < len(self.groups):
                return self.groups[key]
        else:
            for g in self.groups:
                if g.name == key:
                    return g
        raise LayerNotFoundError(f"layer {key!r} is not in the model; valid layers: {', '.join(self.names)}")

    def site(self, key: str | int) -> Site:
        return Site(self.groups.index(self.group(key)), "out")

    def hook_point(self, site: Site) -> HookPoint:
        group = self.group(site.layer)
        if site.kind == "out":
            return HookPoint(group.module, "output")
        if site.kind == "pre":
            return HookPoint(group.unit_module, "output")
        raise LayerNotFoundError(f"classifiers have 'out' and 'pre' sites, got {site}")

    def unit_weights(self, model: nn.Module, group: str | int) -> list[tuple[torch.Tensor, int]]:
        """The tensors whose slices along ``dim`` are a unit's own weights (weight, bias)."""
        layer = resolve_module(model, self.group(group).unit_module)
        tensors = [(layer.weight, 0)]
        if getattr(layer, "bias", None) is not None:
            tensors.append((layer.bias, 0))
        return tensors

    # --- tensors of a group -------------------------------------------------------

    def group_keys(self, group: str | int, state: Mapping[str, torch.Tensor]) -> list[str]:
        """State-dict keys (parameters and buffers) that belong to a group."""
        g = self.group(group)
        return [k for k in state if any(_owns(p, k) for p in g.prefixes)]

    def group_parameters(self, model: nn.Module, group: str | int) -> list[nn.Parameter]:
        g = self.group(group)
        return [p for n, p in model.named_parameters() if any(_owns(x, n) for x in g.prefixes)]

    def describe(self) -> list[dict]:
        return [
            {
                "index": i,
                "name": g.name,
                "site": str(Site(i, "out")),
                "module": g.module,
                "units": g.units,
                "unit_kind": g.unit_kind,
            }
            for i, g in enumerate(self.groups)
        ]


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path, with an error naming the path."""
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise LayerNotFoundError(f"module path {path!r} is not in the model") from exc
