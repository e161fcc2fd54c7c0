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
from memloc.core.adapters import ClassifierAdapter
from memloc.core.classifier.runs import RunFolder
from memloc.core.classifier.splits import RunData
from memloc.core.progress import Progress
from memloc.core.report import Report, provenance
from memloc.core.validation import at_least, positive
from memloc.locate.classifier.rewinding import (
    Cell,
    RetrainConfig,
    RewindConfig,
    default_rewind_epochs,
    gradient_rows,
    retrain_group,
    rewind_cells,
)
from memloc.locate.results_store import ResultStore, config_key
from torch import nn

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

    Example::

        report = locate_layers(RunFolder.open("runs/mlp"), torch.device("cpu"), LayersConfig())
        report.results["rewinding"][0]["noisy_acc"]
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
    cells = _Cells(run, model, adapter, data, layers, final, progress)

    rewind = RewindConfig(epochs=epochs, bn_buffers=config.bn_buffers)
    retrain = RetrainConfig(epochs=config.retrain_epochs, lr=config.retrain_lr, seed=config.seed)
    cells.total = len(layers) * len(epochs) + (len(layers) * retrain.epochs if config.retrain else 0)
    rewinding = cells.rewinding(rewind)
    retraining = cells.retraining(retrain, done=len(layers) * len(epochs)) if config.retrain else []

    dyn = run.load_dynamics()
    gradients = [
        r
        for r in gradient_rows(dyn.groups, dyn.grad_clean, dyn.grad_noisy, dyn.grad_cosine)
        if r["layer"] in layers
    ]
    final_accs = data.accuracies(model).table_row()
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


def _cell_key(layer: str, epoch: int) -> str:
    return f"{layer}@{epoch}"


class _Cells:
    """The table cells of one `locate layers` call, kept in RUN_DIR/locate/layers.json
    under a section per config, so a rerun computes only what is missing."""

    def __init__(
        self,
        run: RunFolder,
        model: nn.Module,
        adapter: ClassifierAdapter,
        data: RunData,
        layers: list[str],
        final: int,
        progress: Progress | None,
    ) -> None:
        self.run, self.model, self.adapter, self.data = run, model, adapter, data
        self.layers, self.final, self.progress = layers, final, progress
        self.store = ResultStore(run.root / "locate" / "layers.json")
        self.total = 0

    def rewinding(self, rewind: RewindConfig) -> list[Cell]:
        """One cell per (layer, epoch), layer-major."""
        store, layers = self.store, self.layers
        section = "rewinding-" + config_key(asdict(rewind) | {"final": self.final})
        finished = sum(
            1 for g in layers for e in rewind.epochs if store.get(section, _cell_key(g, e)) is not None
        )

        def rewind_progress(n: int, _total: int, text: str) -> None:
            if self.progress:
                self.progress(finished + n, self.total, text)

        rewind_cells(
            self.model,
            self.adapter,
            self.data,
            self.run.load_checkpoint,
            rewind,
            skip=lambda layer, epoch: (
                layer not in layers or store.get(section, _cell_key(layer, epoch)) is not None
            ),
            on_cell=lambda cell: store.put(section, _cell_key(cell["layer"], cell["epoch"]), cell),
            progress=rewind_progress,
        )
        return [store.get(section, _cell_key(g, e)) for g in layers for e in rewind.epochs]

    def retraining(self, retrain: RetrainConfig, done: int) -> list[Cell]:
        """Each layer's retraining curve, one row per epoch; the model ends as it began."""
        model, progress = self.model, self.progress
        section = "retraining-" + config_key(asdict(retrain) | {"final": self.final})
        retraining: list[Cell] = []
        init = self.run.load_checkpoint(0)
        final_state = {k: v.clone() for k, v in model.state_dict().items()}
        for layer in self.layers:
            rows = self.store.get(section, layer)
            if rows is None:
                model.load_state_dict(final_state)

                def step(epoch: int, layer: str = layer, base: int = done) -> None:
                    if progress:
                        progress(base + epoch, self.total, f"retrain {layer}, epoch {epoch}")

                rows = retrain_group(model, self.adapter, self.data, init, layer, retrain, progress=step)
                self.store.put(section, layer, rows)
            done += retrain.epochs
            if progress:
                progress(done, self.total, f"retrained {layer}")
            retraining.extend(rows)
        model.load_state_dict(final_state)
        return retraining


@dataclass(frozen=True)
class Headline:
    """Numbers the findings paragraph and the CLI summary quote (rows of the rewinding table)."""

    final: dict
    largest_noisy_drop: Cell | None
    single_layer_removers: list[Cell]


def headline(report: Report) -> Headline:
    """The rewinding cell with the lowest noisy accuracy, and the cells that remove memorization.

    Example::

        best = headline(locate_layers(run, device, LayersConfig())).largest_noisy_drop
    """
    final = report.metrics["final"]
    rows = report.results["rewinding"]
    by_drop = sorted(rows, key=lambda r: r["noisy_acc"]) if rows else []
    best = by_drop[0] if by_drop else None
    # A layer "removes memorization" if rewinding it brings noisy accuracy (given labels)
    # below 10% while clean accuracy keeps 90% of its final value.
    removers = [r for r in rows if r["noisy_acc"] <= 0.10 and r["clean_acc"] >= 0.9 * final["clean_acc"]]
    return Headline(final, best, removers)


def retrain_summary(rows: Sequence[dict]) -> list[dict]:
    """The last row of each layer's retraining curve."""
    last: dict[str, dict] = {}
    for row in rows:
        last[row["layer"]] = row
    return list(last.values())
