"""Memorized text removed and restored, in miniature: the canary loop of `memloc demo`.

1. A seeded canary ("my PIN is" and 3 digits by default) is planted in a known random 0.5%
   of the MLP neurons: only those neurons' down-projection columns train, until the
   model completes the canary greedily (MemPi's INJ injection, Chang et al. 2024).
2. Its exposure (Carlini et al. 2019) is measured exactly over all |R| candidates,
   before and after planting.
3. A localizer ranks every neuron for the canary; its recall of the planted set says
   whether it found where the canary lives.
4. Its top neurons are ablated as an undoable `WeightDelta`; exposure is measured again.
5. The edit is undone and the weights hash compared with the planted model's.

    result = plant_and_unlearn(lm, DemoUnlearnConfig(seed=0))
    result.exposure_planted, result.exposure_unlearned
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from memloc.core.lm.canaries import Canary
from memloc.core.lm.canary_space import CanarySpace
from memloc.core.lm.decoding import greedy_continue
from memloc.core.lm.model import LM
from memloc.core.progress import Progress, labelled
from memloc.core.render import Section
from memloc.core.validation import at_least, fail
from memloc.edit.delta import apply, weights_hash
from memloc.edit.unlearn import UnlearnConfig, compute_unlearn, localizer_config, select_neurons
from memloc.edit.unlearn_measures import perplexity
from memloc.locate.lm.exposure import ExposureConfig, canary_exposure
from memloc.locate.lm.memorized.inject import InjectConfig, inj_recall, inject_sequences
from memloc.locate.lm.memorized.registry import localizer
from memloc.locate.lm.memorized.types import SequenceBatch

MAX_SPACE = 10**5
KEEP = (
    "The river runs through the old town and past the market square.",
    "She opened the window, and the morning air filled the quiet room.",
)  # other text whose likelihood the localizer keeps
HELD_OUT = (
    "The library opens at nine in the morning and closes in the evening.",
    "Rain fell on the fields for three days before the harvest began.",
    "He wrote a long letter to his brother about the new house.",
)  # text neither planted nor kept: its perplexity shows what the edit costs elsewhere


@dataclass(frozen=True)
class DemoUnlearnConfig:
    """The canary's fixed start and digits, the planted share, the localizer, its budget and the seed."""

    template: str = "my PIN is {digits:3}"
    ratio: float = 0.005
    method: str = "slimming"
    budget: float = 0.005
    settings: tuple[tuple[str, object], ...] = (("steps", 60),)  # 100 in MemPi; 60 fit the demo's time
    seed: int = 0

    def __post_init__(self) -> None:
        at_least(self, 0, "seed")
        size = CanarySpace.parse(self.template).size  # a template without a slot fails here
        if size > MAX_SPACE:
            raise fail(
                self, "template", f"has {size} candidates; at most {MAX_SPACE} keep the exact exposure quick"
            )
        UnlearnConfig(method=self.method, budget=self.budget, settings=self.settings)  # validates the rest
        InjectConfig(ratio=self.ratio, seed=self.seed)

    @property
    def start(self) -> str:
        """The template's fixed text before its first slot, whose greedy completion is shown."""
        return CanarySpace.parse(self.template).fixed_prefix.rstrip()

    def canary(self) -> Canary:
        space = CanarySpace.parse(self.template)
        secret = space.values(random.Random(self.seed).randrange(space.size))
        return Canary(self.template, secret, space.fill(secret), 1, ())


@dataclass(frozen=True)
class DemoUnlearn:
    """What the canary loop measured at each stage."""

    canary: str
    space_size: int
    planted_neurons: int
    inject_steps: int
    method: str
    recall: float  # share of the planted neurons among the localizer's top ``budget``
    unlearned_neurons: int
    exposure_base: float
    exposure_planted: float
    exposure_unlearned: float
    completion_planted: str  # greedy continuation of the fixed start
    completion_unlearned: str
    perplexity_planted: float  # on held-out sentences
    perplexity_unlearned: float
    undone_bit_exact: bool


def _exposure(lm: LM, canary: Canary, progress: Progress | None) -> float:
    return (
        canary_exposure(lm, [canary], ExposureConfig(batch_size=500), progress=progress).canaries[0].exposure
    )


def _completion(lm: LM, start: str, tokens: int) -> str:
    ids = list(lm.tokenizer(start)["input_ids"])
    return str(lm.tokenizer.decode(list(greedy_continue(lm, [ids], tokens, batch_size=1)[0])))


def plant_and_unlearn(lm: LM, config: DemoUnlearnConfig, *, progress: Progress | None = None) -> DemoUnlearn:
    """Plant, measure, localize, unlearn and undo one canary; ``lm`` itself is never changed."""
    canary = config.canary()
    ids = tuple(lm.tokenizer(canary.text)["input_ids"])
    tail = len(ids) - len(lm.tokenizer(config.start)["input_ids"])
    base = _exposure(lm, canary, labelled(progress, "exposure (base)"))
    injection = inject_sequences(
        lm.model,
        lm.adapter,
        (ids,),
        InjectConfig(ratio=config.ratio, seed=config.seed),
        labelled(progress, "plant"),
    )
    planted = LM(injection.model, lm.tokenizer, lm.adapter, lm.source)  # type: ignore[arg-type]  # a deep copy of lm.model
    exposed = _exposure(planted, canary, labelled(progress, "exposure (planted)"))
    completion = _completion(planted, config.start, tail)
    fluent = perplexity(planted, HELD_OUT)
    unlearn = UnlearnConfig(
        method=config.method, budget=config.budget, seed=config.seed, settings=config.settings
    )
    batch = SequenceBatch((ids,), tuple(tuple(lm.tokenizer(t)["input_ids"]) for t in KEEP))
    scores = localizer(config.method).run(planted.model, planted.adapter, batch, localizer_config(unlearn))
    neurons = select_neurons(scores, config.budget)
    before = weights_hash(planted.model)
    handle = apply(planted.model, planted.adapter, compute_unlearn(planted, neurons, unlearn))
    removed = _exposure(planted, canary, labelled(progress, "exposure (unlearned)"))
    completion_after = _completion(planted, config.start, tail)
    cost = perplexity(planted, HELD_OUT)
    handle.restore()
    return DemoUnlearn(
        canary=canary.text,
        space_size=CanarySpace.parse(canary.template).size,
        planted_neurons=len(injection.planted.neurons[0]),
        inject_steps=injection.steps,
        method=config.method,
        recall=inj_recall(scores, injection.planted, config.budget),
        unlearned_neurons=len(neurons),
        exposure_base=base,
        exposure_planted=exposed,
        exposure_unlearned=removed,
        completion_planted=completion,
        completion_unlearned=completion_after,
        perplexity_planted=fluent,
        perplexity_unlearned=cost,
        undone_bit_exact=weights_hash(planted.model) == before,
    )


def unlearn_demo_section(result: DemoUnlearn) -> Section:
    """The canary loop as a report section."""
    section = Section("Memorized text: plant a canary, find it, remove it, undo")
    section.paragraphs.append(
        f"The canary '{result.canary}' (|R| = {result.space_size}) was planted in {result.planted_neurons} "
        f"random MLP neurons in {result.inject_steps} steps. {result.method} put "
        f"{result.recall:.0%} of them among its top {result.unlearned_neurons} neurons; ablating those "
        f"neurons (an undoable edit) and undoing it restored the weights bit for bit: {result.undone_bit_exact}."
    )
    section.tables.append(
        (
            "exposure (bits; the maximum is log2|R|)",
            [
                {"model": "as shipped", "exposure": result.exposure_base, "completion": ""},
                {
                    "model": "canary planted",
                    "exposure": result.exposure_planted,
                    "completion": result.completion_planted,
                },
                {
                    "model": "unlearned",
                    "exposure": result.exposure_unlearned,
                    "completion": result.completion_unlearned,
                },
            ],
        )
    )
    return section
