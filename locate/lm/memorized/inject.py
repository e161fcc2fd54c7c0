"""INJ: plant new sequences in chosen neurons, then score localizers by recall (Chang et al. 2024).

MemPi's INJ benchmark: for each new sequence s draw a random set P_s of ``ratio`` of
all neurons; train ONLY the down-projection columns of those neurons until the model
reproduces every sequence greedily (token accuracy 1), or ``max_steps``. All sequences
train together in one model; sequence s's gradient is masked to its own columns:

    Delta <- Adam step on  sum_s  mask_s * d CE(s; W + Delta) / d Delta

A localizer then recalls |top-k(s) ∩ P_s| / |P_s| at a budget of its top k neurons.

Two settings give MemPi's own protocol instead (its reference code): ``stop_loss=0.05``
trains until every sequence's mean token loss is below 0.05, a far deeper injection than
greedy reproduction; ``separate=True`` plants each sequence in its own copy of the model
and localizes it there, so no other sequence's planted columns share its model. P_s is
the same draw either way.

Training never writes the model's weights: a hook adds Delta @ mlp.post to each
layer's MLP output (through `core.hooks.patch`), and the returned model is a copy
with W + Delta, so exactly the planted columns change (the copy doubles the memory).
The learning rate 5e-2 (Adam) is memloc's default, not a published one: on the
fixture LM it plants 6-token random sequences in 2% of the neurons in ~30 steps.

Example::

    injection = inject_sequences(model, adapter, sequences, InjectConfig(seed=0))
    result = run_inj(model, adapter, sequences, other, ["zero_out"], {}, budget=0.005)
    result.table()
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from memloc.core.adapters import TransformerAdapter
from memloc.core.classifier.gradients import frozen_parameters
from memloc.core.errors import DataError
from memloc.core.hooks import patch
from memloc.core.progress import Progress, labelled
from memloc.core.sites import Neuron, Site
from memloc.core.validation import at_least, fail, positive
from memloc.locate.lm.memorized.accuracy import length_chunks, row_accuracy, token_accuracy
from memloc.locate.lm.memorized.localizer_runs import check_budget, choose_localizers, run_localizers
from memloc.locate.lm.memorized.random_baseline import RandomConfig
from memloc.locate.lm.memorized.types import NeuronAttribution, SequenceBatch, model_device, token_losses

_STREAM = 1  # random_baseline.py draws from stream 2 of the same seed


@dataclass(frozen=True)
class InjectConfig:
    """``ratio``: share of all neurons planted per sequence; ``batch_size``: sequences per pass.

    ``stop_loss``: None stops once every sequence is reproduced greedily; a number once every
    sequence's mean token loss is below it (MemPi: 0.05). ``separate``: each sequence in its
    own injected copy of the model (MemPi), rather than all in one.
    """

    ratio: float = 0.005
    lr: float = 5e-2
    max_steps: int = 1000
    seed: int = 0
    batch_size: int = 8
    stop_loss: float | None = None
    separate: bool = False

    def __post_init__(self) -> None:
        positive(self, "ratio", "lr")
        if self.stop_loss is not None:
            positive(self, "stop_loss")
        if self.ratio > 1:
            raise fail(self, "ratio", f"must be at most 1, got {self.ratio}")
        at_least(self, 1, "max_steps", "batch_size")
        at_least(self, 0, "seed")


@dataclass(frozen=True)
class PlantedNeurons:
    """``neurons[s]``: the (layer, unit) neurons sequence s was planted in, sorted."""

    neurons: tuple[tuple[Neuron, ...], ...]
    n_layers: int
    d_mlp: int

    def as_attribution(self) -> NeuronAttribution:
        """The planted sets as scores (1 planted, 0 not): the attribution an oracle would give."""
        scores = []
        for planted in self.neurons:
            score = np.zeros((self.n_layers, self.d_mlp))
            for layer, unit in planted:
                score[layer, unit] = 1.0
            scores.append(score)
        return NeuronAttribution("planted", tuple(scores))


@dataclass(frozen=True)
class Injection:
    """The injected copy of the model, where each sequence lives, and how training ended."""

    model: torch.nn.Module
    planted: PlantedNeurons
    accuracy: tuple[float, ...]  # token accuracy of each sequence on the injected model
    steps: int  # optimizer steps taken

    @property
    def memorized(self) -> bool:
        return all(a == 1.0 for a in self.accuracy)


def plant_neurons(n_layers: int, d_mlp: int, n_sequences: int, config: InjectConfig) -> PlantedNeurons:
    """Per sequence, ceil(ratio * all neurons) neurons drawn uniformly without replacement (seeded)."""
    total = n_layers * d_mlp
    k = max(1, math.ceil(config.ratio * total))
    sets = []
    for s in range(n_sequences):
        flat = np.random.default_rng((config.seed, _STREAM, s)).choice(total, size=k, replace=False)
        sets.append(tuple((int(i // d_mlp), int(i % d_mlp)) for i in sorted(flat)))
    return PlantedNeurons(tuple(sets), n_layers, d_mlp)


def inject_sequences(
    model: torch.nn.Module,
    adapter: TransformerAdapter,
    sequences: tuple[tuple[int, ...], ...],
    config: InjectConfig,
    progress: Progress | None = None,
    planted: PlantedNeurons | None = None,
) -> Injection:
    """Train each sequence into its own planted columns; ``model`` itself is left unchanged.

    ``planted`` (one set per sequence) replaces the seeded draw of `plant_neurons`.
    """
    _check_sequences(sequences)
    device = model_device(model)
    planted = planted or plant_neurons(adapter.n_layers, adapter.d_mlp, len(sequences), config)
    masks = torch.tensor(
        np.stack(planted.as_attribution().scores), dtype=torch.float32, device=device
    )  # (S, L, F)
    # Each delta sits with its layer's weights, which may be on another device (device_map="auto").
    downs = [adapter.down_matrix(model, layer) for layer in range(adapter.n_layers)]
    deltas = [torch.zeros(w.shape, device=w.device, requires_grad=True) for w in downs]
    optimizer = torch.optim.Adam(deltas, lr=config.lr)
    step = 0
    with frozen_parameters(model):
        while True:
            optimizer.zero_grad()
            accuracy, loss = _backward(model, adapter, sequences, deltas, masks, config.batch_size)
            done = accuracy == 1.0 if config.stop_loss is None else loss < config.stop_loss
            if step == config.max_steps or bool(done.all()):
                break
            optimizer.step()
            step += 1
            if progress is not None:
                progress(step, config.max_steps, f"{int(done.sum())} memorized")
    injected = copy.deepcopy(model)
    with torch.no_grad():
        for layer, delta in enumerate(deltas):
            weight = adapter.down_matrix(injected, layer)
            weight.add_(delta.detach().to(weight.dtype))
    final = token_accuracy(injected, adapter, sequences, batch_size=config.batch_size)
    return Injection(injected, planted, tuple(float(a) for a in final), step)


def _check_sequences(sequences: tuple[tuple[int, ...], ...]) -> None:
    if not sequences or any(len(ids) < 2 for ids in sequences):
        raise DataError("INJ needs at least one sequence, each of at least 2 tokens")


def _backward(
    model: torch.nn.Module,
    adapter: TransformerAdapter,
    sequences: tuple[tuple[int, ...], ...],
    deltas: list[torch.Tensor],
    masks: torch.Tensor,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulate every sequence's masked loss gradient into the deltas; (S,) token accuracy and mean loss."""
    accuracy = torch.zeros(len(sequences), dtype=torch.float64)
    loss = torch.zeros(len(sequences), dtype=torch.float64)
    for chunk in length_chunks(sequences, batch_size):
        ids = torch.tensor([sequences[i] for i in chunk], device=model_device(model))
        with patch(model, adapter, _delta_fns(adapter, deltas, masks[chunk])):
            logits = model(input_ids=ids).logits
        losses = token_losses(logits, ids)
        losses.sum().backward()
        accuracy[chunk] = row_accuracy(logits.detach(), ids).cpu()
        loss[chunk] = losses.detach().double().cpu()
    return accuracy, loss


def _delta_fns(
    adapter: TransformerAdapter, deltas: list[torch.Tensor], masks: torch.Tensor
) -> dict[Site, Callable[[torch.Tensor], torch.Tensor]]:
    """Hooks that add Delta @ mlp.post to each layer's MLP output, row r's gradient masked by masks[r]."""
    seen: dict[int, torch.Tensor] = {}
    fns = {}
    for layer in range(adapter.n_layers):
        fns[Site(layer, "mlp.post")] = _keep(seen, layer)
        fns[Site(layer, "mlp.out")] = _add(seen, layer, deltas[layer], masks[:, layer])
    return fns


def _keep(seen: dict[int, torch.Tensor], layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(act: torch.Tensor) -> torch.Tensor:
        seen[layer] = act
        return act

    return fn


def _add(
    seen: dict[int, torch.Tensor], layer: int, delta: torch.Tensor, mask: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(out: torch.Tensor) -> torch.Tensor:
        act = seen.pop(layer).float()  # (R, T, F)
        planted = act * mask[:, None, :].to(act.device)
        # The value is (W + Delta) @ act for every column; only the planted ones carry Delta's gradient.
        extra = planted @ delta.T + (act - planted) @ delta.detach().T
        return out + extra.to(out.dtype)

    return fn


@dataclass(frozen=True)
class InjRow:
    """One localizer's INJ recall: the mean over sequences and each sequence's."""

    method: str
    recall: float
    per_sequence: tuple[float, ...]


@dataclass(frozen=True)
class InjResult:
    """MemPi's INJ table: every localizer's recall of the planted neurons at ``budget``; the last row is random."""

    budget: float
    config: InjectConfig
    planted: PlantedNeurons
    accuracy: tuple[float, ...]  # of each sequence on the injected model (1 = planted)
    steps: int  # the longest injection's optimizer steps (one per sequence when ``config.separate``)
    rows: tuple[InjRow, ...]

    def table(self) -> list[dict]:
        return [{"method": r.method, "recall": r.recall, "budget": self.budget} for r in self.rows]


def recall_per_sequence(
    attribution: NeuronAttribution, planted: PlantedNeurons, budget: float
) -> tuple[float, ...]:
    """Per sequence, |top-budget neurons ∩ planted| / |planted|."""
    out = []
    for s, chosen in enumerate(planted.neurons):
        top = set(attribution.top_neurons(s, budget))
        out.append(len(top & set(chosen)) / len(chosen))
    return tuple(out)


def inj_recall(attribution: NeuronAttribution, planted: PlantedNeurons, budget: float) -> float:
    """MemPi's INJ score: the recall of the planted neurons, averaged over sequences.

    Example::

        inj_recall(injection.planted.as_attribution(), injection.planted, 0.005)   # 1.0
    """
    return float(np.mean(recall_per_sequence(attribution, planted, budget)))


def run_inj(
    model: torch.nn.Module,
    adapter: TransformerAdapter,
    sequences: tuple[tuple[int, ...], ...],
    other: tuple[tuple[int, ...], ...],
    localizers: Sequence[str],
    configs: Mapping[str, object],
    budget: float,
    inject: InjectConfig = InjectConfig(),
    progress: Progress | None = None,
) -> InjResult:
    """Inject ``sequences``, localize them in the injected model (each in its own copy when
    ``inject.separate``), and score each localizer and random.

    ``configs`` maps a localizer's name to its config (defaults otherwise); the random
    baseline draws with ``inject.seed``. ``other`` is the text localizers keep.
    """
    check_budget(budget)
    _check_sequences(sequences)  # before any work: one model per sequence would run none
    chosen = choose_localizers(localizers, configs)
    planted = plant_neurons(adapter.n_layers, adapter.d_mlp, len(sequences), inject)
    everyone = list(range(len(sequences)))
    groups = [[s] for s in everyone] if inject.separate else [everyone]
    recalls: dict[str, list[float]] = {}
    accuracy: list[float] = []
    steps = 0
    for g, members in enumerate(groups):
        tell = labelled(progress, f"sequence {g + 1}/{len(groups)}") if inject.separate else progress
        part = PlantedNeurons(tuple(planted.neurons[s] for s in members), planted.n_layers, planted.d_mlp)
        texts = tuple(sequences[s] for s in members)
        injection = inject_sequences(model, adapter, texts, inject, labelled(tell, "inject"), part)
        batch = SequenceBatch(texts, other)
        draws = RandomConfig(inject.seed, first=members[0])  # each sequence's own random draw
        found = run_localizers(injection.model, adapter, batch, chosen, draws, tell)
        for attribution in found:
            recalls.setdefault(attribution.method, []).extend(recall_per_sequence(attribution, part, budget))
        accuracy += injection.accuracy
        steps = max(steps, injection.steps)
        del injection  # one injected copy of the model at a time
    rows = tuple(InjRow(method, float(np.mean(per)), tuple(per)) for method, per in recalls.items())
    return InjResult(budget, inject, planted, tuple(accuracy), steps, rows)
