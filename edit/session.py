"""The edit session: apply edits under the collapse monitor, save them with a ledger,
measure them, and take them back.

This is the one place the edit flow lives; ``memloc edit``, ``memloc demo`` and the
tests call it. Methods (ROME, MEMIT, KN, AlphaEdit; Meng et al. 2022 and 2023, Dai et
al. 2022, Fang et al. 2025) are chosen through an `EditPlan`; the monitor follows Gupta
et al. 2024 ("Model editing at scale leads to gradual and catastrophic forgetting").
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from memloc.core.checkpoints import atomic_write_text
from memloc.core.errors import MemlocError
from memloc.core.lm.facts import Fact, neighborhood_rule
from memloc.core.lm.loading import quiet_transformers
from memloc.core.lm.model import LM, encode, target_prob
from memloc.core.progress import Progress, labelled
from memloc.edit.delta import Applied, WeightDelta, weights_hash
from memloc.edit.editors import SPAN_METHODS, EditChoice, EditPlan, independent_editor, prepare_editor
from memloc.edit.evaluate import (
    FOLDER_MODE,
    EvalConfig,
    EvalResult,
    FactRow,
    evaluate_edits,
    measure,
    summarize,
)
from memloc.edit.ledger import read_ledger, restore_base_files, save_edited, undo
from memloc.edit.monitor import (
    DEFAULT_UPDATE_RATIO,
    CollapseError,
    MonitorCheck,
    MonitorConfig,
    checked_apply,
    generation_entropy,
)
from memloc.edit.sequential import SequentialConfig


@dataclass(frozen=True)
class Refusal:
    """Facts left as they were: the method found nothing to change, or the monitor said no."""

    case_ids: tuple[str, ...]
    reason: str
    unedited: bool = False  # True: the method had nothing to edit; False: the monitor refused

    def warning(self) -> str:
        """The line a command shows for it."""
        return f"fact {self.case_ids[0]}: {self.reason}; not edited" if self.unedited else self.reason


@dataclass(frozen=True)
class EditOutcome:
    """Edits applied to a model in memory; `restore` takes them all back."""

    choice: EditChoice
    deltas: tuple[WeightDelta, ...]
    handles: tuple[Applied, ...]
    refused: tuple[Refusal, ...]
    checks: tuple[MonitorCheck, ...]
    seconds: float  # choosing layers, statistics, computing and applying

    @property
    def edits(self) -> int:
        return sum(len(d.case_ids) for d in self.deltas)

    def restore(self) -> None:
        for handle in reversed(self.handles):
            handle.restore()


def monitor_for(method: str, max_update_ratio: float | None = None) -> MonitorConfig:
    """The collapse monitor of ``method``: its default update-ratio limit unless one is given."""
    ratio = DEFAULT_UPDATE_RATIO[method] if max_update_ratio is None else max_update_ratio
    return MonitorConfig(max_update_ratio=ratio)


def apply_edits(
    lm: LM,
    facts: Sequence[Fact],
    plan: EditPlan,
    monitor: MonitorConfig,
    *,
    progress: Progress | None = None,
    notify: Callable[[Refusal], None] | None = None,
    pool: Sequence[Fact] = (),
) -> EditOutcome:
    """Edit ``facts`` in place, one fact per edit (MEMIT, AlphaEdit: all in one), each through the monitor.

    A fact the method cannot edit, or an edit the monitor refuses, is skipped and reported
    (to ``notify`` as it happens, and in the outcome); when every edit is refused this raises.
    ``pool`` is the fact file the facts come from: the edit probe of ``--layers auto``
    takes its held-out facts from it.

    Example::

        outcome = apply_edits(lm, facts, EditPlan("rome", layers=(6,)), monitor_for("rome"))
        outcome.restore()
    """
    started = time.perf_counter()
    editor, choice = prepare_editor(lm, facts, plan, progress, pool)
    baseline = generation_entropy(lm, monitor, progress=labelled(progress, "collapse monitor baseline"))
    groups = [list(facts)] if plan.method in SPAN_METHODS else [[f] for f in facts]
    deltas, handles, refused, checks = [], [], [], []
    for i, group in enumerate(groups):
        delta = editor(group)
        refusal = None
        if delta.unedited is not None:
            refusal = Refusal(delta.case_ids, delta.unedited, unedited=True)
        else:
            try:
                checking = labelled(progress, f"edit {i + 1} of {len(groups)}")
                handle, check = checked_apply(lm, delta, monitor, baseline, progress=checking)
            except CollapseError as exc:
                refusal = Refusal(delta.case_ids, str(exc))
            else:
                deltas.append(delta)
                handles.append(handle)
                checks.append(check)
        if refusal is not None:
            refused.append(refusal)
            if notify is not None:
                notify(refusal)
        if progress is not None:
            progress(i + 1, len(groups), "editing")
    if not deltas:
        raise MemlocError(f"every edit was refused; the first reason: {refused[0].reason}")
    seconds = time.perf_counter() - started
    return EditOutcome(choice, tuple(deltas), tuple(handles), tuple(refused), tuple(checks), seconds)


@dataclass(frozen=True)
class RewriteProbs:
    """P(true target) and P(new target) after a fact's rewrite prompt."""

    case_id: str
    prompt: str
    p_true: float
    p_new: float


def rewrite_probs(lm: LM, facts: Sequence[Fact]) -> tuple[RewriteProbs, ...]:
    rows = []
    for fact in facts:
        true = encode(lm.tokenizer, fact.text, fact.subject, fact.target_true)
        new = encode(lm.tokenizer, fact.text, fact.subject, fact.target_new)
        p_true, p_new = target_prob(lm.model, true, lm.device), target_prob(lm.model, new, lm.device)
        rows.append(RewriteProbs(fact.case_id, fact.text, p_true, p_new))
    return tuple(rows)


def require_new_folder(out: Path) -> None:
    """Edited and restored models go to new folders; say so before a model is loaded."""
    if out.exists() and any(out.iterdir()):
        raise MemlocError(f"{out} already exists and is not empty; choose another --out or remove it")


@dataclass(frozen=True)
class SavedEdits:
    """Edits written with their ledger to ``out``, and the rewrite probabilities around them."""

    out: Path
    outcome: EditOutcome
    base_hash: str
    before: tuple[RewriteProbs, ...]
    after: tuple[RewriteProbs, ...]

    def to_dict(self) -> dict:
        """The record ``memloc edit apply --format json`` prints."""
        choice = self.outcome.choice
        return {
            "out": str(self.out),
            "method": choice.method,
            "layers": list(choice.layers),
            "auto_layers": choice.auto_layers,
            "layer_probe": None if choice.probe is None else choice.probe.to_dict(),
            "edits": self.outcome.edits,
            "refused": [{"case_ids": list(r.case_ids), "reason": r.reason} for r in self.outcome.refused],
            "seconds": self.outcome.seconds,
            "base_hash": self.base_hash,
            "facts": [
                {
                    "case_id": b.case_id,
                    "prompt": b.prompt,
                    "p_true": b.p_true,
                    "p_new": b.p_new,
                    "p_true_after": a.p_true,
                    "p_new_after": a.p_new,
                }
                for b, a in zip(self.before, self.after, strict=True)
            ],
            "monitor": list(self.outcome.checks),
        }


def save_edits(
    lm: LM,
    facts: Sequence[Fact],
    plan: EditPlan,
    monitor: MonitorConfig,
    out: Path,
    *,
    progress: Progress | None = None,
    notify: Callable[[Refusal], None] | None = None,
    pool: Sequence[Fact] = (),
) -> SavedEdits:
    """`apply_edits`, then write the edited model and its ledger to the new folder ``out``
    (and ``layer_probe.json`` when the edit probe chose the layers).

    Example::

        saved = save_edits(lm, facts, EditPlan("kn"), monitor_for("kn"), Path("edited"))
        saved.after[0].p_new
    """
    require_new_folder(out)
    base = weights_hash(lm.model)
    before = rewrite_probs(lm, facts)
    outcome = apply_edits(lm, facts, plan, monitor, progress=progress, notify=notify, pool=pool)
    save_edited(lm, out, outcome.deltas, outcome.handles, facts, base)
    if outcome.choice.probe is not None:
        atomic_write_text(
            out / "layer_probe.json", json.dumps(outcome.choice.probe.to_dict(), indent=1) + "\n"
        )
    return SavedEdits(out, outcome, base, before, rewrite_probs(lm, facts))


def evaluate_plan(
    lm: LM,
    facts: Sequence[Fact],
    plan: EditPlan,
    mode: str,
    config: EvalConfig,
    *,
    sequential: SequentialConfig = SequentialConfig(),
    progress: Progress | None = None,
    pool: Sequence[Fact] = (),
) -> EvalResult:
    """Choose layers and statistics for ``plan``, then `evaluate_edits` in ``mode``.

    ``pool``: the fact file, where the edit probe of ``--layers auto`` takes held-out facts.

    Example::

        result = evaluate_plan(lm, facts, EditPlan("rome", layers=(6,)), "single", EvalConfig())
    """
    # Only a sequential run keeps its earlier edits, so only there are their keys K_p (AlphaEdit).
    plan = replace(plan, sequential=mode == "sequential")
    editor, choice = prepare_editor(lm, facts, plan, progress, pool)
    each = independent_editor(lm, plan, choice, progress) if mode == "single" else None
    result = evaluate_edits(
        lm, facts, editor, mode, config, sequential=sequential, independent=each, progress=progress
    )
    return replace(result, method=plan.method, layers=choice.layers, layer_probe=choice.probe)


def evaluate_folder(lm: LM, folder: str | Path, facts: Sequence[Fact], config: EvalConfig) -> EvalResult:
    """An edited folder: post on it as loaded, pre on its base restored in memory from the ledger.

    Example::

        result = evaluate_folder(load_language_model("edited"), "edited", facts, EvalConfig())
    """
    if not (Path(folder) / "ledger.json").is_file():
        raise MemlocError(f"{folder} has no ledger.json; to edit and measure in one go, pass --method")
    post = measure(lm, facts, config)
    ledger, _ = read_ledger(folder)
    undo(lm, folder)
    pre = measure(lm, facts, config)
    rows = tuple(FactRow.of(a, b) for a, b in zip(pre, post, strict=True))
    return EvalResult(
        FOLDER_MODE,
        len(facts),
        summarize(pre),
        summarize(post),
        0.0,
        rows,
        method=ledger.methods(),
        neighborhood_rule=neighborhood_rule(facts),
    )


@dataclass(frozen=True)
class Restored:
    """A base model restored from an edited folder's ledger into ``out``."""

    out: Path
    base_hash: str
    restored_hash: str
    edits_undone: int

    def to_dict(self) -> dict:
        return {
            "out": str(self.out),
            "base_hash": self.base_hash,
            "restored_hash": self.restored_hash,
            "edits_undone": self.edits_undone,
        }


def check_undo_target(folder: Path, out: Path) -> None:
    """Refuse a full ``out`` or the edited folder itself, and a folder without a ledger."""
    if out.exists() and any(out.iterdir()):
        raise MemlocError(f"{out} already exists and is not empty; choose another --out")
    if out.resolve() == folder.resolve():
        raise MemlocError("refusing to write the restored model over the edited one; choose another --out")
    read_ledger(folder)


def restore_into(lm: LM, folder: Path, out: Path) -> Restored:
    """Undo the ledger of ``folder`` on ``lm`` (loaded from it) bit for bit and save the base to ``out``.

    Example::

        restored = restore_into(load_language_model("edited"), Path("edited"), Path("base"))
    """
    ledger = undo(lm, folder)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        lm.model.save_pretrained(out)
        lm.tokenizer.save_pretrained(out)
    restore_base_files(folder, out)  # the base's tokenizer files as they were, not as re-saved
    return Restored(out, ledger.base_hash, weights_hash(lm.model), len(ledger.edits))
