"""Unlearning memorized text by scaling the neurons a localizer blames for it.

Chang, Liu, Carlini and Jia, "Do Localization Methods Actually Localize Memorized
Data in LLMs?", NAACL 2024: a localizer ranks every FFN neuron per memorized
sequence; dropping each sequence's top ``budget`` share of neurons should make the
model stop reproducing it while other text stays fluent. A neuron i of layer l
writes column i of the (D, F) down-projection W (``mlp.out = W @ mlp.post``), so
multiplying its activation by ``scale`` is the same as multiplying that column:

    ΔW[:, i] = (scale − 1) · W[:, i]        (scale 0 ablates the neuron)

The change is a `WeightDelta` whose ``right`` factor holds one-hot columns, like the
knowledge-neuron edit, so it goes through the collapse monitor, the ledger and
``memloc edit undo`` like every other edit.

    config = UnlearnConfig(method="zero_out", budget=0.01)
    attribution = localize(lm, batch, config)
    delta = compute_unlearn(lm, select_neurons(attribution, config.budget), config)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from memloc.core.lm.model import LM
from memloc.core.progress import Progress
from memloc.core.sites import Neuron
from memloc.core.validation import at_least, fail, finite, one_of, positive
from memloc.edit.delta import LayerDelta, WeightDelta
from memloc.edit.kn_edit import NeuronEditError
from memloc.locate.lm.memorized.registry import LOCALIZERS, localizer, make_config
from memloc.locate.lm.memorized.types import NeuronAttribution, SequenceBatch


@dataclass(frozen=True)
class UnlearnConfig:
    """The localizer (a registry name), the per-sequence neuron budget, the column scale, the seed.

    The budget 0.005 (half a percent of all neurons per sequence) is Chang et al.'s
    setting; ``scale`` 0 ablates, 0.5 halves the neurons' output.
    """

    method: str = "hard_concrete"
    budget: float = 0.005
    scale: float = 0.0
    seed: int = 0
    settings: tuple[tuple[str, Any], ...] = ()  # the localizer's own settings, e.g. (("steps", 50),)

    def __post_init__(self) -> None:
        one_of(self, "method", LOCALIZERS)
        positive(self, "budget")
        if self.budget > 1.0:
            raise fail(self, "budget", f"must lie in (0, 1], got {self.budget}")
        finite(self, "scale")
        at_least(self, 0, "seed")


def localize(
    lm: LM, batch: SequenceBatch, config: UnlearnConfig, progress: Progress | None = None
) -> NeuronAttribution:
    """Run the configured localizer: its published defaults, ``config.settings`` over them, and
    ``config.seed`` where it has a seed and the settings name none. ``progress`` follows its steps."""
    spec = localizer(config.method)
    return spec.run(lm.model, lm.adapter, batch, localizer_config(config), progress=progress)


def localizer_config(config: UnlearnConfig) -> Any:
    """The localizer's own frozen config for ``config`` (see `make_config`).

    A mask localizer (Slimming, Hard Concrete) learns the ``drop`` objective here unless the
    settings name one: unlearning wants the neurons whose removal raises the sequence's loss
    while other text keeps its own, not MemPi's neurons the sequence needs (``keep``, the
    localizers' default), which include the ones every text needs.
    """
    settings = dict(config.settings)
    fields = {f.name for f in dataclasses.fields(localizer(config.method).config_type)}
    if "objective" in fields:
        settings.setdefault("objective", "drop")
    return make_config(config.method, tuple(settings.items()), config.seed)


def select_neurons(attribution: NeuronAttribution, budget: float) -> tuple[Neuron, ...]:
    """The union over sequences of each sequence's top ``budget`` neurons, sorted by (layer, unit)."""
    chosen: set[Neuron] = set()
    for seq in range(len(attribution.scores)):
        chosen.update(attribution.top_neurons(seq, budget))
    return tuple(sorted(chosen))


def neurons_per_layer(neurons: Iterable[Neuron]) -> dict[int, int]:
    """How many of ``neurons`` lie in each layer that has any."""
    counts: dict[int, int] = {}
    for layer, _ in neurons:
        counts[layer] = counts.get(layer, 0) + 1
    return dict(sorted(counts.items()))


def compute_unlearn(lm: LM, neurons: Iterable[Neuron], config: UnlearnConfig) -> WeightDelta:
    """The update that scales the down-projection columns of ``neurons`` by ``config.scale``.

    The model is only read. ``info`` records the neurons (all and per layer), the
    budget and the localizer.
    """
    chosen = sorted({(int(layer), int(unit)) for layer, unit in neurons})
    if not chosen:
        raise NeuronEditError("no neurons to unlearn; the localizer chose none")
    parts = []
    for layer in sorted({layer for layer, _ in chosen}):
        lm.adapter.check_layer(layer)
        index = [unit for at, unit in chosen if at == layer]
        if not all(0 <= unit < lm.adapter.d_mlp for unit in index):
            raise NeuronEditError(
                f"a neuron of layer {layer} is out of range; this model has {lm.adapter.d_mlp} per layer"
            )
        columns = lm.adapter.down_matrix(lm.model, layer).detach()[:, index].double()  # (D, k)
        right = torch.zeros(lm.adapter.d_mlp, len(index), dtype=torch.float64, device=columns.device)
        right[index, torch.arange(len(index), device=columns.device)] = 1.0
        parts.append(LayerDelta(layer, (config.scale - 1.0) * columns, right))
    return WeightDelta(
        method="unlearn",
        layers=tuple(parts),
        config=asdict(config),
        info={
            "localizer": config.method,
            "budget": config.budget,
            "neurons": [list(n) for n in chosen],
            "neurons_per_layer": neurons_per_layer(chosen),
        },
    )
