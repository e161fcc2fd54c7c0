"""`memloc train`: train a classifier on noisy labels into a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from memloc.cli.console import emit_json, emit_table, progress_bar, stderr
from memloc.cli.defaults import config_default
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
from memloc.core.errors import MemlocError

if TYPE_CHECKING:
    from memloc.core.classifier.run_results import TrainSummary
    from memloc.core.training.etd import EtdConfig

ETD = "memloc.core.training.etd:EtdConfig"
ETD_PANEL = "Example-tied dropout"
SUMMARY_KEYS = ("clean_train_acc", "noisy_train_acc", "noisy_orig_acc", "test_acc", "epochs", "seconds")


EtdOpt = Annotated[
    bool,
    typer.Option(
        "--etd",
        help="Example-tied dropout (Maini et al. 2023): tie each example to its own memorization units.",
        rich_help_panel=ETD_PANEL,
    ),
]

EtdPGenOpt = Annotated[
    float,
    typer.Option(
        "--etd-p-gen",
        help="Share of each layer's units shared by all examples.",
        rich_help_panel=ETD_PANEL,
    ),
]

EtdPMemOpt = Annotated[
    float,
    typer.Option(
        "--etd-p-mem",
        help="Chance that each other unit is one of an example's memorization units.",
        rich_help_panel=ETD_PANEL,
    ),
]

EtdLayerOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--etd-layer",
        help="Tie this layer group (repeatable). Default: every group but the head.",
        rich_help_panel=ETD_PANEL,
    ),
]

GradAccountingOpt = Annotated[
    bool,
    typer.Option("--grad-accounting/--no-grad-accounting", help="Record clean/noisy gradient norms."),
]

NumClassesOpt = Annotated[
    int | None,
    typer.Option("--num-classes", help="Number of classes (default: the labels' 0..C-1, without gaps)."),
]


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
    num_classes: NumClassesOpt = None,
    resize: ResizeOpt = None,
    normalize: NormalizeOpt = None,
    channels: ChannelsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    grad_accounting: GradAccountingOpt = True,
    etd: EtdOpt = False,
    etd_p_gen: EtdPGenOpt = config_default(ETD, "p_gen"),
    etd_p_mem: EtdPMemOpt = config_default(ETD, "p_mem"),
    etd_layers: EtdLayerOpt = None,
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
        etd=_etd_config(etd, etd_p_gen, etd_p_mem, etd_layers),
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


def _etd_config(on: bool, p_gen: float, p_mem: float, layers: list[str] | None) -> EtdConfig | None:
    """The example-tied dropout settings; its flags without ``--etd`` are refused, not ignored."""
    from memloc.core.training.etd import EtdConfig

    if on:
        return EtdConfig(p_gen, p_mem, tuple(layers) if layers else None)
    given = [
        flag
        for flag, value, default in (
            ("--etd-p-gen", p_gen, config_default(ETD, "p_gen")),
            ("--etd-p-mem", p_mem, config_default(ETD, "p_mem")),
            ("--etd-layer", layers, None),
        )
        if value != default
    ]
    if given:
        raise MemlocError(f"{', '.join(given)} set example-tied dropout; add --etd to train with it")
    return None


def show_summary(summary: TrainSummary, fmt: Format) -> None:
    if fmt is Format.json:
        emit_json(summary.to_dict())
        return
    emit_table("training summary", [{k: getattr(summary, k) for k in SUMMARY_KEYS}])
    stderr.print(f"run folder: {summary.run_dir}")
