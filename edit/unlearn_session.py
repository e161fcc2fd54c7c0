"""Unlearn memorized sequences end to end: localize, ablate, measure, save with a ledger, undo.

The flow of ``memloc edit unlearn`` (Chang et al. 2024's dropout evaluation, made an
undoable edit): the localizer's top neurons per sequence are scaled through the
collapse monitor (`checked_apply`), the edited model is saved with its ledger like
``memloc edit apply`` (so ``memloc edit undo`` restores it bit for bit), and the
report compares memorization, canary exposure, held-out perplexity and fluency
before and after, with the weights hash before, after and after undoing the ledger.

    texts = UnlearnTexts(sequences=("The capital of Gafou is Velmora .",))
    report = unlearn_and_save(lm, texts, UnlearnConfig(method="zero_out"), Path("unlearned"))
    report.after.memorization.extraction_rate
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from memloc.core.dataclass_files import save_dataclass
from memloc.core.errors import DataError
from memloc.core.lm.canaries import Canary
from memloc.core.lm.model import LM
from memloc.core.progress import Progress, labelled, within
from memloc.core.sites import Neuron
from memloc.edit.delta import weights_hash
from memloc.edit.ledger import save_edited, undo
from memloc.edit.monitor import checked_apply, generation_entropy
from memloc.edit.session import monitor_for, require_new_folder
from memloc.edit.unlearn import UnlearnConfig, compute_unlearn, localize, neurons_per_layer, select_neurons
from memloc.edit.unlearn_measures import (
    Memorization,
    MemorizationConfig,
    context_limit,
    perplexity,
    sequence_memorization,
)
from memloc.locate.lm.exposure import ExposureConfig, canary_exposure, check_space
from memloc.locate.lm.memorized.types import NeuronAttribution, SequenceBatch

REPORT_STEM = "unlearn"  # unlearn.json (and its arrays file) in the edited folder


@dataclass(frozen=True)
class UnlearnTexts:
    """The memorized sequences to remove, other text to keep, held-out text and planted canaries."""

    sequences: tuple[str, ...]
    other: tuple[str, ...] = ()
    held_out: tuple[str, ...] = ()
    canaries: tuple[Canary, ...] = ()


@dataclass(frozen=True)
class ModelMeasures:
    """One model state: memorization of the sequences (and of the other text), exposure, perplexity, fluency."""

    memorization: Memorization
    other_memorization: Memorization | None
    exposure: tuple[float, ...]  # per canary, in the canaries file's order; empty without canaries
    perplexity: float | None  # on the held-out text; None without it
    fluency: float  # n-gram entropy of greedy generations (the collapse monitor's prompts)


@dataclass(frozen=True)
class UnlearnReport:
    """What ``memloc edit unlearn`` did and measured; written as unlearn.json in the edited folder."""

    model: str
    config: UnlearnConfig
    neurons: tuple[Neuron, ...]
    neurons_per_layer: dict[int, int]
    update_ratio: dict[int, float]  # ||ΔW||_F / ||W||_F per edited layer
    before: ModelMeasures
    after: ModelMeasures
    base_hash: str
    edited_hash: str
    undone_hash: str  # after undoing the saved ledger in memory: equals base_hash
    out: str = ""
    memorization_config: MemorizationConfig = field(default_factory=MemorizationConfig)
    exposure_config: ExposureConfig = field(default_factory=ExposureConfig)

    def rows(self) -> list[dict]:
        """The before/after table: one row per measure."""
        pairs: list[tuple[str, float | str, float | str]] = [
            ("extraction rate", self.before.memorization.extraction_rate, self.after.memorization.extraction_rate),
            ("exact memorization", self.before.memorization.exact_memorization, self.after.memorization.exact_memorization),
        ]  # fmt: skip
        if self.before.other_memorization is not None and self.after.other_memorization is not None:
            pairs.append(
                (
                    "other text: exact memorization",
                    self.before.other_memorization.exact_memorization,
                    self.after.other_memorization.exact_memorization,
                )
            )
        for i, (b, a) in enumerate(zip(self.before.exposure, self.after.exposure, strict=True)):
            pairs.append((f"exposure of canary {i}", b, a))
        if self.before.perplexity is not None and self.after.perplexity is not None:
            pairs.append(("held-out perplexity", self.before.perplexity, self.after.perplexity))
        pairs.append(("fluency (n-gram entropy)", self.before.fluency, self.after.fluency))
        pairs.append(("weights hash", self.base_hash[:16], self.edited_hash[:16]))
        return [{"measure": name, "before": b, "after": a} for name, b, a in pairs]


def _measure(
    lm: LM,
    texts: UnlearnTexts,
    config: MemorizationConfig,
    exposure_config: ExposureConfig,
    fluency: float,
    progress: Progress | None,
) -> ModelMeasures:
    memorization = sequence_memorization(
        lm, texts.sequences, config, progress=labelled(progress, "sequences")
    )
    other = sequence_memorization(lm, texts.other, config) if texts.other else None
    exposure: tuple[float, ...] = ()
    if texts.canaries:
        found = canary_exposure(
            lm, list(texts.canaries), exposure_config, progress=labelled(progress, "canaries")
        )
        exposure = tuple(c.exposure for c in found.canaries)
    held_out = perplexity(lm, texts.held_out, progress=progress) if texts.held_out else None
    return ModelMeasures(memorization, other, exposure, held_out, fluency)


def sequence_batch(lm: LM, texts: UnlearnTexts) -> SequenceBatch:
    """The token ids the localizers read, each text with the tokenizer's added start."""

    limit = context_limit(lm)

    def ids(text: str) -> tuple[int, ...]:
        return tuple(lm.tokenizer(text, verbose=False)["input_ids"][:limit])

    return SequenceBatch(tuple(ids(t) for t in texts.sequences), tuple(ids(t) for t in texts.other))


def unlearn_and_save(
    lm: LM,
    texts: UnlearnTexts,
    config: UnlearnConfig,
    out: Path,
    *,
    memorization: MemorizationConfig = MemorizationConfig(),
    exposure: ExposureConfig = ExposureConfig(),
    attribution: NeuronAttribution | None = None,
    progress: Progress | None = None,
) -> UnlearnReport:
    """Unlearn ``texts.sequences`` and write the edited model, its ledger and unlearn.json to ``out``.

    ``out`` must be new or empty. On return ``lm`` holds the BASE weights again: the
    saved ledger was undone in memory to check that it restores them exactly. A stored
    ``attribution`` (one score array per sequence, e.g. from `locate memorized-neurons`)
    replaces the localizer run.
    """
    if attribution is not None and len(attribution.scores) != len(texts.sequences):
        raise DataError(
            f"the stored attribution scores {len(attribution.scores)} sequences, but {len(texts.sequences)} were given"
        )
    require_new_folder(out)
    if texts.canaries:
        check_space(list(texts.canaries), exposure)
    base = weights_hash(lm.model)
    monitor = monitor_for("unlearn")
    step = labelled(progress, "unlearn")
    batch = sequence_batch(lm, texts)  # a sequence too short to localize fails here, before any work
    if step:
        step(0, 4, "measuring the base model")
    fluency = generation_entropy(lm, monitor)
    before = _measure(lm, texts, memorization, exposure, fluency, labelled(progress, "before"))
    if step:
        step(1, 4, f"localizing with {config.method}")
    inside = within(step, 1, 4, f"localizing with {config.method}")
    scores = attribution if attribution is not None else localize(lm, batch, config, inside)
    neurons = select_neurons(scores, config.budget)
    delta = compute_unlearn(lm, neurons, config)
    handle, check = checked_apply(lm, delta, monitor, fluency, progress=labelled(progress, "monitor"))
    if step:
        step(2, 4, "measuring the edited model")
    after = _measure(lm, texts, memorization, exposure, check.entropy_after, labelled(progress, "after"))
    save_edited(lm, out, [delta], [handle], (), base)
    edited = weights_hash(lm.model)
    if step:
        step(3, 4, "undoing the saved ledger")
    undo(lm, out)
    report = UnlearnReport(
        model=lm.source,
        config=config,
        neurons=neurons,
        neurons_per_layer=neurons_per_layer(neurons),
        update_ratio=check.update_ratio,
        before=before,
        after=after,
        base_hash=base,
        edited_hash=edited,
        undone_hash=weights_hash(lm.model),
        out=str(out),
        memorization_config=memorization,
        exposure_config=exposure,
    )
    save_dataclass(report, out / REPORT_STEM)
    if step:
        step(4, 4, "done")
    return report
