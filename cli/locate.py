"""`memloc locate`: where is it memorized?"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from memloc.cli.classifier_memorization import memorization_command
from memloc.cli.console import emit_json, emit_table, progress_bar, stderr
from memloc.cli.defaults import config_default
from memloc.cli.facts import enhance_command, knowledge_neurons_command, suppress_command, trace_command
from memloc.cli.options import DeviceOpt, Format, FormatOpt, RunDirArg, SeedOpt, note
from memloc.core.errors import MemlocError
from typer.core import TyperCommand

LAYERS = "memloc.locate.classifier.layers:LayersConfig"
FLIP = "memloc.locate.classifier.unit_search:FlipConfig"

app = typer.Typer(
    no_args_is_help=True, help="Locate memorization: layers, units, examples; facts in language models."
)
app.command("trace")(trace_command)
app.command("suppress")(suppress_command)
app.command("enhance")(enhance_command)
app.command("knowledge-neurons")(knowledge_neurons_command)
app.command("memorization")(memorization_command)


@app.command("layers")
def layers_command(
    run_dir: RunDirArg,
    epochs: Annotated[
        list[int] | None,
        typer.Option("--epoch", help="Rewind to this epoch (repeatable). Default: 0 and ~5 early epochs."),
    ] = None,
    layers: Annotated[
        list[str] | None, typer.Option("--layer", help="Only this layer group (repeatable).")
    ] = None,
    bn_buffers: Annotated[
        bool,
        typer.Option(
            "--bn-buffers/--no-bn-buffers", help="Rewind BatchNorm running statistics with the weights."
        ),
    ] = True,
    retrain: Annotated[
        bool, typer.Option("--retrain/--no-retrain", help="Also retrain each layer on clean data.")
    ] = True,
    retrain_epochs: Annotated[
        int, typer.Option("--retrain-epochs", help="Most epochs of retraining per layer.")
    ] = config_default(LAYERS, "retrain_epochs"),
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Rewind and retrain each layer group; summarize gradient accounting. Resumable."""
    from memloc.core.classifier.runs import RunFolder
    from memloc.core.devices import resolve_device
    from memloc.locate.classifier.layers import LayersConfig, headline, locate_layers, retrain_summary

    run = RunFolder.open(run_dir)
    config = LayersConfig(
        rewind_epochs=tuple(epochs) if epochs else None,
        layers=tuple(layers) if layers else None,
        bn_buffers=bn_buffers,
        retrain=retrain,
        retrain_epochs=retrain_epochs,
        seed=seed,
    )
    target = resolve_device(device)
    with progress_bar("layers") as update:
        result = locate_layers(run, target, config, progress=update)
    if fmt is Format.json:
        emit_json(result.summary())
        return
    emit_table("rewinding (accuracy after rewinding one layer)", [c.to_dict() for c in result.rewinding])
    if result.retraining:
        emit_table(
            "retraining (last epoch per layer)", [c.to_dict() for c in retrain_summary(result.retraining)]
        )
    if result.etd is not None:
        emit_table("example-tied dropout (final model, accuracy by units kept)", result.etd.rows())
    mask = run.mask_note()
    if mask:
        note(mask)
        return
    best = headline(result).largest_noisy_drop
    stderr.print(f"largest noisy-accuracy drop: {best.layer} at epoch {best.epoch} -> {best.noisy_acc:.3f}")


@app.command("scores")
def scores_command(
    run_dir: RunDirArg,
    curvature: Annotated[
        bool, typer.Option("--curvature", help="Also compute input loss curvature (slower).")
    ] = False,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Per-example memorization scores and their AUROC at flagging mislabeled examples."""
    from memloc.core.classifier.runs import RunFolder
    from memloc.core.devices import resolve_device
    from memloc.locate.classifier.scores import CurvatureConfig, locate_scores

    run = RunFolder.open(run_dir)
    target = resolve_device(device)
    with progress_bar("scores") as update:
        result = locate_scores(
            run, target, curvature=CurvatureConfig(seed=seed) if curvature else None, progress=update
        )
    if fmt is Format.json:
        emit_json(result.summary())
        return
    emit_table("AUROC at flagging mislabeled examples", [dict(result.auroc)])
    if run.mask_note():
        note(f"AUROC n/a: {run.mask_note()}")
    stderr.print(f"per-example scores: {result.scores_file}")


class FlipMode(str, Enum):
    mask = "mask"
    weights = "weights"


class _ClassifierNeuronsCommand(TyperCommand):
    """`locate neurons` is for classifiers; language models have their own command."""

    def parse_args(self, ctx, args):  # click calls it with its own types
        if any(arg == "--model" or arg.startswith("--model=") for arg in args):
            raise MemlocError(
                "'locate neurons' takes a classifier run folder; for a language model use "
                "'memloc locate knowledge-neurons --model M --facts F'"
            )
        return super().parse_args(ctx, args)


@app.command("neurons", cls=_ClassifierNeuronsCommand)
def neurons_command(
    run_dir: RunDirArg,
    examples: Annotated[
        str,
        typer.Option(
            "--examples",
            help=(
                "noisy, clean, both; comma-separated example ids; or by score: top:SCORE[:K] / "
                "bottom:SCORE[:K], the K examples with the highest / lowest SCORE (csl, forgetting, "
                "learning_time, or curvature after 'locate scores --curvature'), e.g. top:csl:50. "
                "A choice by score needs no noise mask."
            ),
        ),
    ] = "both",
    n: Annotated[
        int,
        typer.Option(
            "--n",
            help="Examples per group (noisy/clean), chosen with the seed; K of top:/bottom: without one.",
        ),
    ] = 100,
    max_units: Annotated[
        int, typer.Option("--max-units", help="Most units to zero per example.")
    ] = config_default(FLIP, "max_units"),
    collateral: Annotated[
        float, typer.Option("--collateral", help="Most accuracy points the held-out clean set may lose.")
    ] = config_default(FLIP, "collateral"),
    mode: Annotated[
        FlipMode, typer.Option("--mode", help="mask activations, or zero the units' weights.")
    ] = FlipMode.mask,
    batch: Annotated[int, typer.Option("--batch", help="Target examples per forward pass.")] = config_default(
        FLIP, "batch_size"
    ),
    include_head: Annotated[
        bool, typer.Option("--include-head", help="Also consider the classifier head's units.")
    ] = False,
    heads: Annotated[
        bool, typer.Option("--heads", help="Also search attention heads (ViT-family models).")
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="Results file (default RUN_DIR/locate/neurons.jsonl).")
    ] = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """The fewest units that flip each example of a classifier. Resumable.

    For a language model's knowledge neurons, see 'memloc locate knowledge-neurons'.
    """
    from memloc.core.classifier.runs import RunFolder
    from memloc.core.devices import resolve_device
    from memloc.core.paths import writable_file
    from memloc.locate.classifier.unit_runs import RESULTS, locate_neurons, summary_rows
    from memloc.locate.classifier.unit_search import FlipConfig

    run = RunFolder.open(run_dir)
    writable_file(out or run.root / RESULTS)
    config = FlipConfig(
        max_units=max_units,
        collateral=collateral,
        mode=mode.value,
        batch_size=batch,
        include_head=include_head,
        heads=heads,
        seed=seed,
    )
    target = resolve_device(device)
    with progress_bar("neurons") as update:
        result = locate_neurons(run, target, config, examples=examples, n=n, out=out, progress=update)
    if fmt is Format.json:
        emit_json(result.summary())
        return
    if run.mask_note():
        note(f"{run.mask_note()}; per-example results only")
    rows = summary_rows(result.groups())
    emit_table("units to flip an example", rows)
    shares = [{"group": g, **s.layer_share} for g, s in result.groups().items()]
    emit_table("share of units per layer", shares)
    stderr.print(f"per-example results: {result.jsonl}; graph: {result.graphml}")


# Memorized text in language models (cli/memorized_text.py).
from memloc.cli.memorized_text import extractable_command  # noqa: E402

app.command("extractable")(extractable_command)
from memloc.cli.memorized_text import exposure_command  # noqa: E402

app.command("exposure")(exposure_command)
from memloc.cli.memorized_neurons import memorized_neurons_command  # noqa: E402

app.command("memorized-neurons")(memorized_neurons_command)
from memloc.cli.mempi_benchmarks import del_command, inj_command  # noqa: E402

app.command("inj")(inj_command)
app.command("del")(del_command)
