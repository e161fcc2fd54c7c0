"""`memloc import`: a classifier run trained elsewhere, as a memloc run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from memloc.cli.console import emit_json, emit_table, progress_bar, stderr
from memloc.cli.options import (
    ChannelsOpt,
    ClassifierModelOpt,
    DeviceOpt,
    Format,
    FormatOpt,
    GroupsOpt,
    ModelArgsOpt,
    NormalizeOpt,
    OutOpt,
    ResizeOpt,
    SeedOpt,
    TrustPickleOpt,
    note,
)
from memloc.core.errors import MemlocError

SUMMARY_KEYS = ("clean_train_acc", "noisy_train_acc", "noisy_orig_acc", "test_acc", "epochs")


DataOpt = Annotated[
    str,
    typer.Option("--data", help="The training data, as memloc train takes it, in training order."),
]

LabelsOpt = Annotated[
    Path,
    typer.Option("--labels", help="The labels training used (.npy, .npz or CSV), in data order."),
]

SourceArg = Annotated[
    Path | None,
    typer.Argument(
        help=(
            "The checkpoints: a folder of per-epoch files (.safetensors, .pt, .bin), a folder of "
            "Trainer checkpoint-N/ folders, or a text file listing them in order."
        ),
        show_default=False,
    ),
]

TrueLabelsOpt = Annotated[
    Path | None, typer.Option("--true-labels", help="The uncorrupted labels (gives the noise mask).")
]

NoiseMaskOpt = Annotated[
    Path | None, typer.Option("--noise-mask", help="Which training labels are noisy (booleans).")
]

CheckpointOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--checkpoint", help="A checkpoint file, in training order (repeatable; instead of SOURCE)."
    ),
]

InitOpt = Annotated[
    Path | None,
    typer.Option("--init", help="The initialization (epoch 0), for rewinding and retraining."),
]

LrOpt = Annotated[float | None, typer.Option("--lr", help="Learning rate for retraining (zoo default).")]

BatchSizeOpt = Annotated[
    int | None, typer.Option("--batch-size", help="Batch size for retraining (zoo default).")
]

GradAccountingOpt = Annotated[
    bool,
    typer.Option("--grad-accounting/--no-grad-accounting", help="Compute the checkpoint gradients."),
]


def import_command(
    out: OutOpt,
    data: DataOpt,
    labels: LabelsOpt,
    source: SourceArg = None,
    model: ClassifierModelOpt = None,
    true_labels: TrueLabelsOpt = None,
    noise_mask: NoiseMaskOpt = None,
    checkpoint: CheckpointOpt = None,
    init: InitOpt = None,
    model_args: ModelArgsOpt = None,
    groups: GroupsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    resize: ResizeOpt = None,
    normalize: NormalizeOpt = None,
    channels: ChannelsOpt = None,
    lr: LrOpt = None,
    batch_size: BatchSizeOpt = None,
    grad_accounting: GradAccountingOpt = True,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Import a classifier run trained elsewhere: checkpoints in place, labels, recomputed dynamics.

    memloc import outside/ckpt --out runs/outside --model cnn --data digits --labels outside/labels.npy
    """
    from memloc.core.classifier.imported import ImportConfig, import_run
    from memloc.core.classifier.model_source import parse_groups, parse_model_args
    from memloc.core.classifier.runs import RunFolder
    from memloc.core.devices import resolve_device
    from memloc.core.paths import writable_folder

    if model is None:
        raise MemlocError(
            "memloc import needs --model: a zoo arch, a Hugging Face folder or package.module:factory"
        )
    sources = _sources(source, checkpoint)
    config = ImportConfig(
        checkpoints=sources,
        model=model,
        data=data,
        labels=str(labels),
        true_labels=str(true_labels) if true_labels else None,
        noise_mask=str(noise_mask) if noise_mask else None,
        init=str(init) if init else None,
        model_args=parse_model_args(model_args),
        groups=parse_groups(groups),
        trust_pickle=trust_pickle,
        resize=resize,
        normalize=normalize,
        channels=channels,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        gradients=grad_accounting,
    )
    writable_folder(out)
    with progress_bar("import") as update:
        result = import_run(RunFolder(out), config, resolve_device(device), progress=update)
    if not result.mask_known:
        note(RunFolder(out).mask_note() or "")
    if fmt is Format.json:
        emit_json({**result.summary.to_dict(), "seconds_per_checkpoint": result.seconds_per_checkpoint})
        return
    emit_table("imported run", [{k: getattr(result.summary, k) for k in SUMMARY_KEYS}])
    if result.seconds_per_checkpoint is None:
        stderr.print(f"run folder: {out} (already imported; nothing to do)")
    else:
        stderr.print(
            f"run folder: {out}; {result.computed} checkpoints, "
            f"{result.seconds_per_checkpoint:.2f} s per checkpoint"
        )


def _sources(source: Path | None, checkpoint: list[Path] | None) -> tuple[str, ...]:
    if source is not None and checkpoint:
        raise MemlocError("give SOURCE or --checkpoint files, not both")
    if source is not None:
        return (str(source),)
    if checkpoint:
        return tuple(str(c) for c in checkpoint)
    raise MemlocError("memloc import needs SOURCE (a folder or list of checkpoints) or --checkpoint files")
