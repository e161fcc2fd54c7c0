"""`memloc locate`: where is it memorized?"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from memloc.cli.console import emit_json, emit_table, progress_bar, stderr
from memloc.cli.facts import (
    enhance_command,
    kn_config,
    knowledge_neurons_command,
    suppress_command,
    trace_command,
)
from memloc.cli.options import (
    DeviceOpt,
    DocStartOpt,
    Dtype,
    DtypeOpt,
    Format,
    FormatOpt,
    LimitFactsOpt,
    RunDirArg,
    SeedOpt,
    TrustRemoteCodeOpt,
)
from memloc.core.classifier.runs import RunFolder
from memloc.core.devices import resolve_device
from memloc.core.errors import MemlocError
from memloc.locate.classifier.layers import LayersConfig, headline, locate_layers, retrain_summary
from memloc.locate.classifier.scores import CurvatureConfig, locate_scores
from memloc.locate.classifier.unit_runs import locate_neurons, summary_rows
from memloc.locate.classifier.unit_search import FlipConfig

app = typer.Typer(
    no_args_is_help=True, help="Locate memorization: layers, units, examples; facts in language models."
)
app.command("trace")(trace_command)
app.command("suppress")(suppress_command)
app.command("enhance")(enhance_command)


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
    ] = 10,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Rewind and retrain each layer group; summarize gradient accounting. Resumable."""
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
        report = locate_layers(run, target, config, progress=update)
    if fmt is Format.json:
        emit_json({**report.results, "final": report.metrics["final"], "config": report.config})
        return
    emit_table("rewinding (accuracy after rewinding one layer)", report.results["rewinding"])
    if report.results["retraining"]:
        emit_table("retraining (last epoch per layer)", retrain_summary(report.results["retraining"]))
    best = headline(report).largest_noisy_drop
    stderr.print(
        f"largest noisy-accuracy drop: {best['layer']} at epoch {best['epoch']} -> {best['noisy_acc']:.3f}"
    )


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
    run = RunFolder.open(run_dir)
    target = resolve_device(device)
    with progress_bar("scores") as update:
        report = locate_scores(
            run, target, curvature=CurvatureConfig(seed=seed) if curvature else None, progress=update
        )
    if fmt is Format.json:
        emit_json({"auroc": report.metrics["auroc"], **report.results})
        return
    emit_table("AUROC at flagging mislabeled examples", [report.metrics["auroc"]])
    stderr.print(f"per-example scores: {report.results['scores_file']}")


class FlipMode(str, Enum):
    mask = "mask"
    weights = "weights"


@app.command("neurons")
def neurons_command(
    run_dir: Annotated[
        Path | None,
        typer.Argument(
            help="A run folder from 'memloc train' (classifiers); omit with --model.", show_default=False
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="A language model: knowledge neurons of the facts in --facts.", show_default=False
        ),
    ] = None,
    facts: Annotated[
        Path | None, typer.Option("--facts", help="Fact file (with --model).", show_default=False)
    ] = None,
    steps: Annotated[int, typer.Option("--steps", help="LM: integrated-gradient steps.")] = 20,
    coarse: Annotated[float, typer.Option("--coarse", help="LM: coarse threshold × max attribution.")] = 0.2,
    share: Annotated[
        float, typer.Option("--share", help="LM: share of a fact's prompts for the refined set.")
    ] = 0.7,
    relation_share: Annotated[
        float, typer.Option("--relation-share", help="LM: share of a relation's facts for relation neurons.")
    ] = 0.1,
    lm_layers: Annotated[
        list[str] | None, typer.Option("--layers", help="LM: only these layers (repeat, 3,4 or 3-5).")
    ] = None,
    limit: LimitFactsOpt = None,
    dtype: DtypeOpt = Dtype.float32,
    trust_remote_code: TrustRemoteCodeOpt = False,
    doc_start: DocStartOpt = "auto",
    examples: Annotated[
        str, typer.Option("--examples", help="noisy, clean, both, or comma-separated example ids.")
    ] = "both",
    n: Annotated[
        int, typer.Option("--n", help="Examples per group (noisy/clean), chosen with the seed.")
    ] = 100,
    max_units: Annotated[int, typer.Option("--max-units", help="Most units to zero per example.")] = 500,
    collateral: Annotated[
        float, typer.Option("--collateral", help="Most accuracy points the held-out clean set may lose.")
    ] = 5.0,
    mode: Annotated[
        FlipMode, typer.Option("--mode", help="mask activations, or zero the units' weights.")
    ] = FlipMode.mask,
    batch: Annotated[int, typer.Option("--batch", help="Target examples per forward pass.")] = 32,
    include_head: Annotated[
        bool, typer.Option("--include-head", help="Also consider the classifier head's units.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="Results file (default RUN_DIR/locate/neurons.jsonl).")
    ] = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Classifiers: the fewest units that flip each example. LMs (--model): knowledge neurons. Resumable."""
    if model is not None:
        config = kn_config(steps, coarse, share, relation_share, lm_layers, batch if batch != 32 else None)
        knowledge_neurons_command(
            model, facts, config, limit, out, device, dtype, trust_remote_code, fmt, doc_start
        )
        return
    if run_dir is None:
        raise MemlocError("give a run folder (classifiers) or --model and --facts (language models)")
    run = RunFolder.open(run_dir)
    config = FlipConfig(
        max_units=max_units,
        collateral=collateral,
        mode=mode.value,
        batch_size=batch,
        include_head=include_head,
        seed=seed,
    )
    config.validate()
    target = resolve_device(device)
    with progress_bar("neurons") as update:
        report = locate_neurons(run, target, config, examples=examples, n=n, out=out, progress=update)
    if fmt is Format.json:
        emit_json({**report.metrics, "sharing": report.results["sharing"], "jsonl": report.results["jsonl"]})
        return
    rows = summary_rows(report.metrics)
    emit_table("units to flip an example", rows)
    shares = [{"group": g, **s["layer_share"]} for g, s in report.metrics.items()]
    emit_table("share of units per layer", shares)
    stderr.print(f"per-example results: {report.results['jsonl']}; graph: {report.results['graphml']}")
