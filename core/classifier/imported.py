"""`memloc import`: a classifier training run made elsewhere, as a memloc run folder.

The checkpoints stay where they are: checkpoints/imported.json names each file with
its sha256, size and mtime (core/classifier/manifest.py), and `RunFolder` reads them
through it. config.json keeps the layout of a trained run (``train`` holds the
TrainConfig fields retraining and rewinding read, ``model`` the model's source) and
adds an ``import`` section with the provenance. dynamics.npz and metrics.json are
recomputed from the checkpoints (core/classifier/dynamics_pass.py), one checkpoint at
a time, saved after each, so an interrupted import resumes at the next checkpoint.

Epoch indices: with ``init`` the initialization is epoch 0 and the checkpoints are
epochs 1..E in training order; without it epoch 0 is absent (its dynamics row is NaN
and analyses that need it say they need ``memloc import --init``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from memloc.core.checkpoints import check_names_and_shapes, load_into, load_tensors
from memloc.core.classifier.checkpoint_discovery import FoundCheckpoint, discover_checkpoints
from memloc.core.classifier.data import Dataset, load_dataset
from memloc.core.classifier.dynamics_pass import GRADIENT_KIND, checkpoint_dynamics, group_indices
from memloc.core.classifier.hf_keys import to_module_names
from memloc.core.classifier.label_files import ImportedLabels, imported_labels, read_label_file
from memloc.core.classifier.manifest import Manifest, ManifestEntry
from memloc.core.classifier.model_source import (
    ModelSource,
    build_classifier,
    classifier_adapter,
    source_for_model_arg,
)
from memloc.core.classifier.preprocess import Preprocess
from memloc.core.classifier.preprocess_flags import preprocess_from_flags
from memloc.core.classifier.run_results import EpochRecord, TrainSummary
from memloc.core.classifier.runs import Dynamics, RunFolder
from memloc.core.classifier.splits import RunData
from memloc.core.errors import CheckpointError, RunFolderError
from memloc.core.progress import Progress
from memloc.core.training.train import TrainConfig
from memloc.core.training.zoo import ARCHS, ModelSpec, default_width
from memloc.core.validation import at_least, fail, positive
from safetensors import SafetensorError, safe_open
from torch import nn


@dataclass(frozen=True)
class ImportConfig:
    """Everything `import_run` reads; the same config into the same folder is a no-op.

    ``checkpoints``: one folder or list file, or several checkpoint files in order.
    ``model``: a zoo arch, a Hugging Face image-model folder, or ``package.module:factory``.
    ``lr``/``batch_size``/``weight_decay``: the settings retraining uses (zoo defaults when None).
    """

    checkpoints: tuple[str, ...]
    model: str
    data: str
    labels: str
    true_labels: str | None = None
    noise_mask: str | None = None
    init: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    groups: tuple[str, ...] | None = None
    trust_pickle: bool = False
    resize: str | None = None
    normalize: str | None = None
    channels: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    weight_decay: float = 0.0
    seed: int = 0
    gradients: bool = True

    def __post_init__(self) -> None:
        positive(self, "lr")
        at_least(self, 1, "batch_size")
        at_least(self, 0, "seed", "weight_decay")
        if self.channels not in (None, 1, 3):
            raise fail(self, "channels", f"must be 1 or 3, got {self.channels}")


@dataclass(frozen=True)
class ImportResult:
    """The imported run's summary and how long the dynamics pass took per checkpoint."""

    summary: TrainSummary
    checkpoints: int
    computed: int  # checkpoints this call computed (0 for a finished import rerun)
    seconds_per_checkpoint: float | None
    mask_known: bool


def import_run(
    run: RunFolder,
    config: ImportConfig,
    device: torch.device,
    *,
    progress: Progress | None = None,
    fail_after: int | None = None,
) -> ImportResult:
    """Import the run ``config`` names into ``run`` (or resume that import); nothing is copied.

    ``fail_after`` stops with an error after that many checkpoints (tests of resuming).

    Example::

        config = ImportConfig(("outside/ckpt",), "examples.outside_models:make_cnn", "digits", "outside/labels.npy")
        result = import_run(RunFolder("runs/outside"), config, torch.device("cpu"))
        result.summary.noisy_train_acc
    """
    found = discover_checkpoints(config.checkpoints)
    data = _dataset(config)
    labels = _labels(config, data)
    source = _source(config, data)
    model = build_classifier(source)
    adapter = classifier_adapter(source, model)
    manifest = _manifest(found, config, model)
    run_config = _run_config(config, source, data, labels, len(found))
    _start(run, run_config, manifest, labels, data, config)

    history, dynamics = _resumed(run, adapter.names, manifest)
    model.to(device)
    on_device = RunData.build(data, labels.labels, device)
    groups = group_indices(model, adapter) if config.gradients else None
    todo = [e for e in manifest.epochs() if e not in {h.epoch for h in history}]
    seconds: list[float] = []
    for i, epoch in enumerate(todo):
        if fail_after is not None and i >= fail_after:
            raise RunFolderError(f"import stopped after {fail_after} checkpoints (fail_after)")
        began = time.perf_counter()
        load_into(model, to_module_names(model, manifest.load(epoch)), source=manifest.entry(epoch).path)
        step = checkpoint_dynamics(
            model, on_device, groups if epoch > 0 else None, mask_known=labels.mask_known
        )
        dynamics = _add(dynamics, epoch, step.loss, step.pred, labels, step.gradients, len(adapter.names))
        seconds.append(time.perf_counter() - began)
        row = EpochRecord(
            epoch, **asdict(step.accuracies), train_loss=float(step.loss.mean()), seconds=seconds[-1]
        )
        history = (*history, row)
        run.save_imported_epoch(dynamics, history)
        if progress:
            progress(len(history), len(manifest.entries), f"checkpoint {epoch}")
    summary = run.finish(history)
    per = sum(seconds) / len(seconds) if seconds else None
    return ImportResult(summary, len(manifest.entries), len(seconds), per, labels.mask_known)


def _dataset(config: ImportConfig) -> Dataset:
    """The training data in its own order (no subset), with the model folder's or the flags' preprocessing."""
    return load_dataset(config.data, limit=None, seed=config.seed, preprocess=_preprocess(config))


def _labels(config: ImportConfig, data: Dataset) -> ImportedLabels:
    given = read_label_file(config.labels, "labels")
    true = read_label_file(config.true_labels, "true labels") if config.true_labels else None
    mask = read_label_file(config.noise_mask, "noise mask") if config.noise_mask else None
    return imported_labels(given, len(data.y_train), data.num_classes, true_labels=true, noise_mask=mask)


def _source(config: ImportConfig, data: Dataset) -> ModelSource:
    if config.model in ARCHS:
        return ModelSpec(config.model, data.input_shape, data.num_classes, default_width(config.model))
    return source_for_model_arg(
        config.model,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        model_args=config.model_args,
        groups=config.groups,
    )


def _manifest(found: tuple[FoundCheckpoint, ...], config: ImportConfig, model: nn.Module) -> Manifest:
    """Hash every file, and refuse now (before anything is written) an init or first checkpoint that does not fit."""
    first = 1
    entries = []
    if config.init:
        entries.append(ManifestEntry.of(0, Path(config.init)))
    for i, c in enumerate(found):
        entries.append(ManifestEntry.of(first + i, c.path, c.step, c.source_epoch))
    manifest = Manifest(tuple(entries), config.trust_pickle)
    for entry in entries:
        _check_fits(model, Path(entry.path), config.trust_pickle)
    return manifest


def _check_fits(model: nn.Module, path: Path, trust_pickle: bool) -> None:
    """Refuse a file whose names or shapes do not fit ``model``, or a pickle not trusted.

    safetensors headers are read without the tensors (cheap); a pickle must be loaded to
    know whether it runs code.
    """
    if path.suffix != ".safetensors":
        tensors = to_module_names(model, load_tensors(path, trust_pickle=trust_pickle))
        load_into(copy.deepcopy(model), tensors, source=str(path))
        return
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file: {exc}") from None
    check_names_and_shapes(model, to_module_names(model, shapes), source=str(path))


def _run_config(
    config: ImportConfig, source: ModelSource, data: Dataset, labels: ImportedLabels, count: int
) -> dict[str, Any]:
    arch = source.arch if isinstance(source, ModelSpec) else "cnn"
    noise = float(labels.labels.mask.mean()) if labels.mask_known else 0.0
    train = TrainConfig.for_arch(
        config.data,
        arch,
        noise=noise,
        epochs=count,
        seed=config.seed,
        lr=config.lr,
        batch_size=config.batch_size,
        weight_decay=config.weight_decay,
        init=str(Path(config.init).resolve()) if config.init else None,
        preprocess=_preprocess(config),
    ).to_dict()
    if not isinstance(source, ModelSpec):
        # Not a zoo model: the arch and width name the source, the rest keeps TrainConfig's fields.
        train.update(arch=source.label, width=None)
    provenance = {
        "checkpoints": [str(Path(c).resolve()) for c in config.checkpoints],
        "labels": str(Path(config.labels).resolve()),
        "true_labels": str(Path(config.true_labels).resolve()) if config.true_labels else None,
        "noise_mask": str(Path(config.noise_mask).resolve()) if config.noise_mask else None,
        "mask": labels.mask_source,
        "model": config.model,
        "gradient_kind": GRADIENT_KIND,
        "gradients": config.gradients,
        "defaults_from": arch,  # the zoo arch whose training defaults fill the train section
    }
    return {"train": train, "model": source.to_dict(), "import": provenance}


def _preprocess(config: ImportConfig) -> Preprocess | None:
    folder = config.model if Path(config.model).is_dir() else None
    return preprocess_from_flags(
        resize=config.resize, normalize=config.normalize, channels=config.channels, model_folder=folder
    )


def _start(
    run: RunFolder,
    run_config: dict[str, Any],
    manifest: Manifest,
    labels: ImportedLabels,
    data: Dataset,
    config: ImportConfig,
) -> None:
    for path in (*config.checkpoints, config.labels, config.init):
        if path and Path(path).resolve().is_relative_to(run.root.resolve()):
            raise RunFolderError(f"the input {path} lies inside the output folder {run.root}")
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    run.start_import(run_config, labels.labels, data.train_index, manifest, stamp)


def _resumed(
    run: RunFolder, groups: tuple[str, ...] | list[str], manifest: Manifest
) -> tuple[tuple[EpochRecord, ...], Dynamics]:
    """The epochs a previous call finished, and the dynamics rows up to them."""
    history = run.imported_history()
    if not history:
        return (), Dynamics.empty(len(run.load_noise()[0].given), tuple(groups), GRADIENT_KIND)
    return history, run.load_dynamics().truncate(history[-1].epoch)


def _add(
    dynamics: Dynamics,
    epoch: int,
    loss: np.ndarray,
    pred: np.ndarray,
    labels: ImportedLabels,
    stats: Any,
    n_groups: int,
) -> Dynamics:
    given = labels.labels.given
    if epoch == 0:
        return Dynamics.first(loss, pred, given, dynamics.groups, dynamics.gradient_kind)
    if epoch == 1 and dynamics.loss.shape[0] == 0:
        dynamics = dynamics.placeholder_first()  # no --init: row 0 is NaN
    if epoch != dynamics.loss.shape[0]:
        raise CheckpointError(
            f"checkpoint {epoch} follows row {dynamics.loss.shape[0] - 1}; the import is out of order"
        )
    return dynamics.append(loss, pred, given, [stats] if stats is not None else [], n_groups)
