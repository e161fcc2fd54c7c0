"""`memloc demo`: the main job on bundled real data, end to end."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from memloc.core.data import DataError, load_dataset
from memloc.core.devices import resolve_device
from memloc.core.runs import RunFolder
from memloc.core.train import TrainConfig, train_run
from memloc.locate.classifier_report import build_report
from memloc.locate.layers import LayersConfig, headline, locate_layers
from memloc.locate.neuron_runs import locate_neurons
from memloc.locate.neurons import FlipConfig
from memloc.locate.scores import locate_scores

from .console import emit_json, progress_bar, stderr, stdout
from .options import DeviceOpt, Format, FormatOpt, SeedOpt
from .train import show_summary


class DemoData(str, Enum):
    fashion = "fashion-mnist"
    digits = "digits"


DEMO_FLIPS = 20  # noisy and clean examples for the flip search
DEMO_RETRAIN = 5  # epochs of retraining per layer

# Small enough for two CPU cores in a few minutes, large enough to memorize visibly.
DEMO_LIMIT = 4000


def _demo_config(data: str, seed: int) -> TrainConfig:
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
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Train a CNN on Fashion-MNIST with 10% noisy labels, locate the memorization, write the report."""
    config = _demo_config(data.value, seed)
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
    md, page = build_report(run, out / "report")
    if fmt is Format.json:
        emit_json(
            {
                "train": summary,
                "run_dir": str(run.root),
                "auroc": scores.metrics["auroc"],
                "rewinding": layers.results["rewinding"],
                "neurons": neurons.metrics,
                "report": str(page),
            }
        )
        return
    show_summary(summary, fmt)
    best = headline(layers)["largest_noisy_drop"]
    aurocs = ", ".join(f"{k} {v:.3f}" for k, v in scores.metrics["auroc"].items())
    flips = "Units zeroed to flip an example (mean over flipped): " + ", ".join(
        f"{g} {s['mean_units']:.2f} ({s['flip_rate']:.0%} flip)"
        for g, s in neurons.metrics.items()
        if s["mean_units"] is not None
    )
    stdout.print(
        f"\nThe model memorized {summary['noisy_train_acc']:.1%} of the {summary['noisy_examples']} "
        f"mislabeled examples (on their wrong labels) while reaching {summary['test_acc']:.1%} test accuracy.\n"
        f"  config and labels : {run.config_path}, {run.noise_path}\n"
        f"  checkpoints       : {run.checkpoints}/epoch_000..{summary['epochs']:03d}.safetensors\n"
        f"  dynamics          : {run.dynamics_path} (per-example loss/prediction per epoch, gradient accounting)\n"
        f"  metrics           : {run.metrics_path}\n"
        f"Rewinding {best['layer']} to epoch {best['epoch']} lowers noisy accuracy the most, to {best['noisy_acc']:.1%}.\n"
        f"AUROC at flagging the mislabeled examples: {aurocs}.\n"
        f"{flips}\n"
        f"  layer analyses    : {run.root / 'locate'}\n"
        f"  report            : {page}  (Markdown: {md})\n"
        f"Next: memloc models inspect {run.root}"
    )
