"""`memloc locate layers`: rewinding, retraining and gradient accounting for a run.

The methods live in locate/rewinding.py; this module runs them over a run folder,
resumably (finished cells are kept in RUN_DIR/locate/layers.json), and returns a
Report with the tables ``rewinding``, ``retraining`` and ``gradients``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from memloc.core.classifier.runs import RunFolder
from memloc.core.classifier.splits import RunData
from memloc.core.progress import Progress
from memloc.core.report import Report, provenance
from memloc.core.validation import at_least, positive
from memloc.locate.classifier.rewinding import (
    RetrainConfig,
    RewindConfig,
    default_rewind_epochs,
    gradient_rows,
    retrain_group,
    rewind_cells,
)
from memloc.locate.results_store import ResultStore, config_key

REPORT_PATH = "locate/layers_report.json"  # inside the run folder


@dataclass(frozen=True)
class LayersConfig:
    """What `locate layers` runs: rewinding epochs (None: default), layers (None: all)."""

    rewind_epochs: tuple[int, ...] | None = None
    layers: tuple[str, ...] | None = None
    bn_buffers: bool = True
    retrain: bool = True
    retrain_epochs: int = 10
    retrain_lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        at_least(self, 1, "retrain_epochs")
        positive(self, "retrain_lr")


def locate_layers(
    run: RunFolder, device: torch.device, config: LayersConfig, *, progress: Progress | None = None
) -> Report:
    """Rewind and retrain every chosen layer group of a run; resumable.

    report = locate_layers(RunFolder.open("runs/cnn"), torch.device("cpu"), LayersConfig())
    """
    began = time.perf_counter()
    final = run.epochs()[-1]
    epochs = (
        tuple(sorted(set(config.rewind_epochs))) if config.rewind_epochs else default_rewind_epochs(final)
    )
    run.require_epochs(epochs)
    model, adapter = run.load_model()
    layers = [adapter.group(name).name for name in config.layers] if config.layers else adapter.names
    model.to(device)
    data = RunData.load(run, device)
    store = ResultStore(run.root / "locate" / "layers.json")

    rewind = RewindConfig(epochs=epochs, bn_buffers=config.bn_buffers)
    rewind_section = "rewinding-" + config_key(asdict(rewind) | {"final": final})
    retrain = RetrainConfig(epochs=config.retrain_epochs, lr=config.retrain_lr, seed=config.seed)
    retrain_section = "retraining-" + config_key(asdict(retrain) | {"final": final})
    total = len(layers) * len(epochs) + (len(layers) * retrain.epochs if config.retrain else 0)

    def cell_key(layer: str, epoch: int) -> str:
        return f"{layer}@{epoch}"

    finished = sum(1 for g in layers for e in epochs if store.get(rewind_section, cell_key(g, e)) is not None)

    def rewind_progress(n: int, _total: int, text: str) -> None:
        if progress:
            progress(finished + n, total, text)

    rewind_cells(
        model,
        adapter,
        data,
        run.load_checkpoint,
        rewind,
        skip=lambda layer, epoch: (
            layer not in layers or store.get(rewind_section, cell_key(layer, epoch)) is not None
        ),
        on_cell=lambda cell: store.put(rewind_section, cell_key(cell["layer"], cell["epoch"]), cell),
        progress=rewind_progress,
    )
    done = len(layers) * len(epochs)
    rewinding = [store.get(rewind_section, cell_key(g, e)) for g in layers for e in epochs]

    retraining: list[dict] = []
    if config.retrain:
        init = run.load_checkpoint(0)
        final_state = {k: v.clone() for k, v in model.state_dict().items()}
        for layer in layers:
            rows = store.get(retrain_section, layer)
            if rows is None:
                model.load_state_dict(final_state)

                def step(epoch: int, layer: str = layer, base: int = done) -> None:
                    if progress:
                        progress(base + epoch, total, f"retrain {layer}, epoch {epoch}")

                rows = retrain_group(model, adapter, data, init, layer, retrain, progress=step)
                store.put(retrain_section, layer, rows)
            done += retrain.epochs
            if progress:
                progress(done, total, f"retrained {layer}")
            retraining.extend(rows)
        model.load_state_dict(final_state)

    dyn = run.load_dynamics()
    gradients = [
        r
        for r in gradient_rows(dyn.groups, dyn.grad_clean, dyn.grad_noisy, dyn.grad_cosine)
        if r["layer"] in layers
    ]
    final_accs = data.accuracies(model)
    train = run.config()["train"]
    report = Report(
        method="locate.layers",
        model_id=f"{train['arch']}@{train['data']}",
        config={
            "rewind": asdict(rewind),
            "retrain": asdict(retrain) if config.retrain else None,
            "layers": layers,
        },
        results={"rewinding": rewinding, "retraining": retraining, "gradients": gradients},
        metrics={"final": final_accs, "final_epoch": final, "seconds": round(time.perf_counter() - began, 3)},
        provenance=provenance(train["seed"], {"final_checkpoint": run.checkpoint(final)}),
    )
    report.save(run.root / REPORT_PATH)
    return report


def headline(report: Report) -> dict:
    """Numbers the findings paragraph and the CLI summary quote."""
    final = report.metrics["final"]
    rows = report.results["rewinding"]
    by_drop = sorted(rows, key=lambda r: r["noisy_acc"]) if rows else []
    best = by_drop[0] if by_drop else None
    # A layer "removes memorization" if rewinding it brings noisy accuracy (given labels)
    # below 10% while clean accuracy keeps 90% of its final value.
    removers = [r for r in rows if r["noisy_acc"] <= 0.10 and r["clean_acc"] >= 0.9 * final["clean_acc"]]
    return {"final": final, "largest_noisy_drop": best, "single_layer_removers": removers}


def retrain_summary(rows: Sequence[dict]) -> list[dict]:
    """The last row of each layer's retraining curve."""
    last: dict[str, dict] = {}
    for row in rows:
        last[row["layer"]] = row
    return list(last.values())
