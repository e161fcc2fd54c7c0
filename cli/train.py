"""`memloc train`: train a classifier on noisy labels into a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from memloc.cli.console import emit_json, emit_table, progress_bar, stderr
from memloc.cli.options import (
    Arch,
    ChannelsOpt,
    DeviceOpt,
    Format,
    FormatOpt,
    NormalizeOpt,
    OutOpt,
    ResizeOpt,
    SeedOpt,
    TrustPickleOpt,
    note,
)

if TYPE_CHECKING:
    from memloc.core.classifier.run_results import TrainSummary

SUMMARY_KEYS = ("clean_train_acc", "noisy_train_acc", "noisy_orig_acc", "test_acc", "epochs", "seconds")


def train_command(
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help=(
                "digits, fashion-mnist, a folder of IDX/.npz files, an image folder "
                "(train/CLASS/*.png, test/CLASS/...) or a saved Hugging Face DatasetDict."
            ),
        ),
    ],
    out: OutOpt,
    arch: Annotated[Arch, typer.Option("--arch", help="Model from the zoo.")] = Arch.cnn,
    noise: Annotated[
        float, typer.Option("--noise", help="Share of training labels to corrupt, in [0, 1).")
    ] = 0.1,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Epochs (default per architecture).")] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Keep a seeded stratified subset of N training examples.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Batch size (default per architecture).")
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Peak Adam learning rate (default per architecture).")
    ] = None,
    width: Annotated[float | None, typer.Option("--width", help="Width multiplier of the model.")] = None,
    init: Annotated[
        Path | None, typer.Option("--init", help="Start from these weights (.safetensors or .pt).")
    ] = None,
    num_classes: Annotated[
        int | None,
        typer.Option("--num-classes", help="Number of classes (default: the labels' 0..C-1, without gaps)."),
    ] = None,
    resize: ResizeOpt = None,
    normalize: NormalizeOpt = None,
    channels: ChannelsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    grad_accounting: Annotated[
        bool,
        typer.Option("--grad-accounting/--no-grad-accounting", help="Record clean/noisy gradient norms."),
    ] = True,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Train a classifier on noisy labels, saving checkpoints, dynamics and gradient accounting."""
    from memloc.core.classifier.preprocess_flags import preprocess_from_flags
    from memloc.core.classifier.runs import RunFolder
    from memloc.core.devices import resolve_device
    from memloc.core.paths import writable_folder
    from memloc.core.training.train import TrainConfig, train_run

    config = TrainConfig.for_arch(
        data,
        arch.value,
        noise=noise,
        epochs=epochs,
        limit=limit,
        batch_size=batch_size,
        lr=lr,
        width=width,
        seed=seed,
        grad_accounting=grad_accounting,
        init=str(init) if init else None,
        num_classes=num_classes,
        preprocess=preprocess_from_flags(resize=resize, normalize=normalize, channels=channels),
    )
    writable_folder(out)
    target = resolve_device(device)
    with progress_bar("train") as update:
        summary = train_run(
            RunFolder(out),
            config,
            target,
            trust_pickle=trust_pickle,
            progress=update,
            notify=lambda message: note(message, field="limit"),
        )
    show_summary(summary, fmt)


def show_summary(summary: TrainSummary, fmt: Format) -> None:
    if fmt is Format.json:
        emit_json(summary.to_dict())
        return
    emit_table("training summary", [{k: getattr(summary, k) for k in SUMMARY_KEYS}])
    stderr.print(f"run folder: {summary.run_dir}")
