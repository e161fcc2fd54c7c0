"""`memloc demo`: the main job on bundled real data, end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from memloc.core.data import DataError, load_dataset
from memloc.core.devices import resolve_device
from memloc.core.runs import RunFolder
from memloc.core.train import TrainConfig, train_run

from .console import emit_json, progress_bar, stderr, stdout
from .options import DeviceOpt, Format, FormatOpt, SeedOpt
from .train import show_summary

# Small enough for two CPU cores in a few minutes, large enough to memorize visibly.
DEMO_LIMIT = 4000


def _demo_config(seed: int) -> TrainConfig:
    try:
        load_dataset("fashion-mnist", limit=10, seed=seed)
        data, arch, extra = "fashion-mnist", "cnn", {"limit": DEMO_LIMIT, "batch_size": 64, "epochs": 30}
    except DataError:
        stderr.print("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); using digits")
        data, arch, extra = "digits", "mlp", {}
    return TrainConfig.for_arch(data, arch, noise=0.1, seed=seed, **extra)


def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo's outputs.")] = Path("memloc-demo"),
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Train a CNN on Fashion-MNIST with 10% noisy labels and show where everything is."""
    config = _demo_config(seed)
    run = RunFolder(out / "run")
    stderr.print(
        f"[bold]memloc demo[/]: {config.arch} on {config.data} ({config.limit or 'all'} images), "
        f"{config.noise:.0%} of labels corrupted, {config.epochs} epochs -> {run.root}"
    )
    with progress_bar("train") as update:
        summary = train_run(run, config, resolve_device(device), progress=update)
    if fmt is Format.json:
        emit_json({"train": summary, "run_dir": str(run.root)})
        return
    show_summary(summary, fmt)
    stdout.print(
        f"\nThe model memorized {summary['noisy_train_acc']:.1%} of the {summary['noisy_examples']} "
        f"mislabeled examples (on their wrong labels) while reaching {summary['test_acc']:.1%} test accuracy.\n"
        f"  config and labels : {run.config_path}, {run.noise_path}\n"
        f"  checkpoints       : {run.checkpoints}/epoch_000..{summary['epochs']:03d}.safetensors\n"
        f"  dynamics          : {run.dynamics_path} (per-example loss/prediction per epoch, gradient accounting)\n"
        f"  metrics           : {run.metrics_path}\n"
        f"Next: memloc models inspect {run.root}"
    )
