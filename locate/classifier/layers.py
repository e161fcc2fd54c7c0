"""`memloc locate layers`: rewinding, retraining and gradient accounting for a run.

The methods live in locate/rewinding.py; this module runs them over a run folder,
resumably (finished cells are kept in RUN_DIR/locate/layers.json), and returns a
typed `LayersResult` with the tables ``rewinding``, ``retraining`` and ``gradients``,
stored as a Report in RUN_DIR/locate/layers_report.json. On a run trained with
example-tied dropout it also measures what dropping the memorization units does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import cast

import torch
from memloc.core.adapters import ClassifierAdapter
from memloc.core.classifier.runs import RunFolder
from memloc.core.classifier.splits import Accuracies, RunData
from memloc.core.progress import Progress
from memloc.core.report import Report, provenance
from memloc.core.training.etd import EtdLayout
from memloc.core.validation import at_least, positive
from memloc.locate.classifier.etd_effect import EtdEffect, etd_effect
from memloc.locate.classifier.layer_results import LayerCell, LayersResult
from memloc.locate.classifier.rewinding import (
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
        at_least(self, 0, "seed")
        positive(self, "retrain_lr")


def locate_layers(
    run: RunFolder, device: torch.device, config: LayersConfig, *, progress: Progress | None = None
) -> LayersResult:
    """Rewind and retrain every chosen layer group of a run; resumable.

    Example::

        result = locate_layers(RunFolder.open("runs/mlp"), torch.device("cpu"), LayersConfig())
        result.rewinding[0].noisy_acc
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
    retraining = cells.retraining(retrain, done=len(layers) * len(epochs)) if config.retrain else ()

    dyn = run.load_dynamics()
    gradients = tuple(
        r
        for r in gradient_rows(dyn.groups, dyn.grad_clean, dyn.grad_noisy, dyn.grad_cosine)
        if r.layer in layers
    )
    etd = _etd_effect(run, model, adapter, data)
    final_accs = data.accuracies(model)
    if not run.mask_known():
        rewinding, retraining = _without_split(rewinding), _without_split(retraining)
        final_accs = Accuracies(math.nan, math.nan, math.nan, final_accs.test_acc)
    result = LayersResult(
        rewind=rewind,
        retrain=retrain if config.retrain else None,
        layers=tuple(layers),
        rewinding=rewinding,
        retraining=retraining,
        gradients=gradients,
        final=final_accs,
        final_epoch=final,
        seconds=round(time.perf_counter() - began, 3),
        etd=etd,
    )
    report = Report(
        method="locate.layers",
        model_id=run.model_id(),
        **result.to_dict(),
        provenance=provenance(run.seed(), {"final_checkpoint": run.checkpoint(final)}),
    )
    report.save(run.root / REPORT_PATH)
    return result


def _etd_effect(
    run: RunFolder, model: nn.Module, adapter: ClassifierAdapter, data: RunData
) -> EtdEffect | None:
    """What dropping the memorization units does, for a run trained with example-tied dropout."""
    config = run.etd()
    if config is None:
        return None
    return etd_effect(model, EtdLayout.build(config, adapter, run.seed()), data)


def _without_split(cells: tuple[LayerCell, ...]) -> tuple[LayerCell, ...]:
    """Cells of a run whose noise mask is unknown: only the test accuracy means anything (NaN for the rest)."""
    nan = math.nan
    return tuple(replace(c, clean_acc=nan, noisy_acc=nan, noisy_orig_acc=nan) for c in cells)


def load_layers(run: RunFolder) -> LayersResult | None:
    """The stored result of `locate layers` on ``run``, or None when it has not run."""
    path = run.root / REPORT_PATH
    return LayersResult.from_report(Report.load(path)) if path.is_file() else None


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

    def rewinding(self, rewind: RewindConfig) -> tuple[LayerCell, ...]:
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
            on_cell=lambda cell: store.put(section, _cell_key(cell.layer, cell.epoch), cell),
            progress=rewind_progress,
        )
        return tuple(
            LayerCell.from_dict(cast(dict, store.get(section, _cell_key(g, e))))
            for g in layers
            for e in rewind.epochs
        )

    def retraining(self, retrain: RetrainConfig, done: int) -> tuple[LayerCell, ...]:
        """Each layer's retraining curve, one row per epoch; the model ends as it began."""
        model, progress = self.model, self.progress
        section = "retraining-" + config_key(asdict(retrain) | {"final": self.final})
        retraining: list[LayerCell] = []
        init = self.run.initialization()
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
            retraining.extend(
                r if isinstance(r, LayerCell) else LayerCell.from_dict(r) for r in cast(list, rows)
            )
        model.load_state_dict(final_state)
        return tuple(retraining)


@dataclass(frozen=True)
class Headline:
    """Numbers the findings paragraph and the CLI summary quote (rows of the rewinding table)."""

    final: Accuracies
    largest_noisy_drop: LayerCell | None
    single_layer_removers: tuple[LayerCell, ...]


def headline(result: LayersResult) -> Headline:
    """The rewinding cell with the lowest noisy accuracy, and the cells that remove memorization.

    Example::

        best = headline(locate_layers(run, device, LayersConfig())).largest_noisy_drop
    """
    rows = result.rewinding
    best = min(rows, key=lambda r: r.noisy_acc) if rows else None
    # A layer "removes memorization" if rewinding it brings noisy accuracy (given labels)
    # below 10% while clean accuracy keeps 90% of its final value.
    clean = result.final.clean_train_acc
    removers = tuple(r for r in rows if r.noisy_acc <= 0.10 and r.clean_acc >= 0.9 * clean)
    return Headline(result.final, best, removers)


def retrain_summary(rows: Sequence[LayerCell]) -> tuple[LayerCell, ...]:
    """The last row of each layer's retraining curve."""
    last: dict[str, LayerCell] = {}
    for row in rows:
        last[row.layer] = row
    return tuple(last.values())
