"""The memorized-sequence localizers by name, so that callers choose one with a string.

Every localizer is a pure function ``(model, adapter, SequenceBatch, config) ->
NeuronAttribution`` with its own frozen config; `localizer` looks one up and refuses
an unknown name with the list of known ones.

    spec = localizer("hard_concrete")
    result = spec.run(model, adapter, batch, spec.config_type(steps=200))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from memloc.core.adapters import TransformerAdapter
from memloc.core.errors import DataError
from memloc.core.progress import Progress
from memloc.locate.lm.memorized.activations import ActivationsConfig, localize_activations
from memloc.locate.lm.memorized.hard_concrete import HardConcreteConfig, localize_hard_concrete
from memloc.locate.lm.memorized.integrated_gradients import IGConfig, localize_integrated_gradients
from memloc.locate.lm.memorized.slimming import SlimmingConfig, localize_slimming
from memloc.locate.lm.memorized.types import NeuronAttribution, SequenceBatch
from memloc.locate.lm.memorized.zero_out import ZeroOutConfig, localize_zero_out


class LocalizeFn(Protocol):
    """A localizer: attributions of every sequence of the batch; ``progress`` follows its steps."""

    def __call__(
        self,
        model: torch.nn.Module,
        adapter: TransformerAdapter,
        batch: SequenceBatch,
        config: Any,
        *,
        progress: Progress | None = None,
    ) -> NeuronAttribution: ...


@dataclass(frozen=True)
class Localizer:
    """A localizer's name, its config class (defaults = the published settings) and its function."""

    name: str
    config_type: type
    run: LocalizeFn


LOCALIZERS: dict[str, Localizer] = {
    spec.name: spec
    for spec in (
        Localizer("zero_out", ZeroOutConfig, localize_zero_out),
        Localizer("activations", ActivationsConfig, localize_activations),
        Localizer("ig", IGConfig, localize_integrated_gradients),
        Localizer("slimming", SlimmingConfig, localize_slimming),
        Localizer("hard_concrete", HardConcreteConfig, localize_hard_concrete),
    )
}


def localizer(name: str) -> Localizer:
    """The localizer called ``name``; an unknown name is refused with the known ones."""
    try:
        return LOCALIZERS[name]
    except KeyError:
        raise DataError(f"unknown localizer {name!r}; choose one of {', '.join(LOCALIZERS)}") from None


def make_config(name: str, settings: tuple[tuple[str, Any], ...] = (), seed: int | None = None) -> Any:
    """Localizer ``name``'s frozen config: its defaults, ``settings`` over them, and ``seed`` where it
    has a seed that the settings leave unset. An unknown setting is refused with the known ones."""
    spec = localizer(name)
    names = {f.name for f in dataclasses.fields(spec.config_type)}
    chosen = dict(settings)
    unknown = sorted(set(chosen) - names)
    if unknown:
        raise DataError(f"{name} has no setting {unknown[0]!r}; it has {', '.join(sorted(names))}")
    if seed is not None and "seed" in names:
        chosen.setdefault("seed", seed)
    return spec.config_type(**chosen)
