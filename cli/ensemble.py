"""`memloc ensemble`: train K models of a run on balanced seeded subsets (a subset ensemble)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from memloc.cli.console import emit_json, emit_table, progress_bar, stderr
from memloc.cli.defaults import config_default
from memloc.cli.options import DeviceOpt, Format, FormatOpt, RunDirArg
from memloc.core.errors import MemlocError

if TYPE_CHECKING:
    from memloc.core.ensemble.batched import BatchedExecutor
    from memloc.core.ensemble.engine import EnsembleSummary
    from memloc.core.executors import Executor

CONFIG = "memloc.core.ensemble.config:EnsembleConfig"
TRAINING_PANEL = "Training (default: the run's own)"
EXECUTOR_PANEL = "Executor"

# The members' training settings; unset, each is the run's own.
EpochsOpt = Annotated[
    int | None, typer.Option("--epochs", help="Epochs per model.", rich_help_panel=TRAINING_PANEL)
]
BatchSizeOpt = Annotated[
    int | None, typer.Option("--batch-size", help="Batch size.", rich_help_panel=TRAINING_PANEL)
]
LrOpt = Annotated[
    float | None, typer.Option("--lr", help="Peak Adam learning rate.", rich_help_panel=TRAINING_PANEL)
]
WeightDecayOpt = Annotated[
    float | None, typer.Option("--weight-decay", help="Adam weight decay.", rich_help_panel=TRAINING_PANEL)
]


class ExecutorName(str, Enum):
    sequential = "sequential"
    ray = "ray"
    batched = "batched"


def ensemble_command(
    run_dir: RunDirArg,
    models: Annotated[int, typer.Option("--models", help="K, the number of models.")] = 16,
    keep: Annotated[
        float,
        typer.Option("--keep", help="Share of the examples each model trains on (0.7: Feldman-Zhang)."),
    ] = config_default(CONFIG, "keep"),
    seed: Annotated[int, typer.Option("--seed", help="Seed of the membership and the members.")] = 0,
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    lr: LrOpt = None,
    weight_decay: WeightDecayOpt = None,
    keep_weights: Annotated[
        bool, typer.Option("--keep-weights", help="Also save every model's weights.")
    ] = False,
    executor: Annotated[
        ExecutorName,
        typer.Option(
            "--executor",
            help="sequential (one process), ray (local Ray, or --address), batched (K small models at once).",
            rich_help_panel=EXECUTOR_PANEL,
        ),
    ] = ExecutorName.sequential,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="Ray cluster to join (default: start a local Ray).",
            rich_help_panel=EXECUTOR_PANEL,
        ),
    ] = None,
    gpus_per_model: Annotated[
        float | None,
        typer.Option(
            "--gpus-per-model", help="GPUs per Ray task, e.g. 0.25.", rich_help_panel=EXECUTOR_PANEL
        ),
    ] = None,
    models_per_pass: Annotated[
        int | None,
        typer.Option(
            "--models-per-pass",
            help="Batched: models per pass (caps memory).",
            rich_help_panel=EXECUTOR_PANEL,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Ensemble folder (default RUN_DIR/ensembles/k{K}-keep{keep}-seed{seed})."),
    ] = None,
    device: DeviceOpt = "auto",
    fmt: FormatOpt = Format.table,
) -> None:
    """Train K models on balanced seeded subsets of a run's training set, keeping their final logits."""
    from memloc.core.classifier.runs import RunFolder
    from memloc.core.devices import resolve_device
    from memloc.core.ensemble.config import EnsembleConfig
    from memloc.core.ensemble.engine import train_ensemble

    config = EnsembleConfig(
        models,
        keep,
        seed,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        keep_weights=keep_weights,
    )
    chosen = _executor(executor, address, gpus_per_model, models_per_pass)
    run = RunFolder.open(run_dir)
    target = resolve_device(device)
    with progress_bar("ensemble") as update:
        summary = train_ensemble(run, config, chosen, target, out=out, progress=update)
    show_summary(summary, fmt)


def _executor(
    name: ExecutorName, address: str | None, gpus: float | None, per_pass: int | None
) -> Executor | BatchedExecutor:
    """The executor the flags ask for; a flag of another executor is refused, not ignored."""
    stray = [
        flag
        for flag, value, owner in (
            ("--address", address, ExecutorName.ray),
            ("--gpus-per-model", gpus, ExecutorName.ray),
            ("--models-per-pass", per_pass, ExecutorName.batched),
        )
        if value is not None and name is not owner
    ]
    if stray:
        raise MemlocError(
            f"{stray[0]} does not apply to --executor {name.value}; drop it or change --executor"
        )
    if name is ExecutorName.ray:
        from memloc.core.executors import RayExecutor

        return RayExecutor(address, gpus_per_job=gpus or 0.0)
    if name is ExecutorName.batched:
        from memloc.core.ensemble.batched import BatchedExecutor

        return BatchedExecutor(per_pass)
    from memloc.core.executors import SequentialExecutor

    return SequentialExecutor()


def show_summary(summary: EnsembleSummary, fmt: Format) -> None:
    if fmt is Format.json:
        emit_json(summary)
        return
    row = {
        "models": summary.models,
        "trained now": summary.trained,
        "executor": summary.executor,
        "seconds": summary.seconds,
        "in acc": summary.in_acc,
        "out acc": summary.out_acc,
        "test acc": summary.test_acc,
    }
    emit_table("subset ensemble", [row])
    stderr.print(f"ensemble folder: {summary.folder}")
