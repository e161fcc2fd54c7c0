"""Training classifiers on noisy labels, keeping what later analyses need.

Per epoch it saves a checkpoint (epoch 0 is the initialization), the per-example
loss, correctness on the given label and predicted class of every training example
(the "dynamics"), and the per-group gradient accounting of Maini et al. 2023.

With example-tied dropout (``TrainConfig.etd``, core/training/etd.py) every step runs each
example with its own train-time units, and the recorded dynamics and accuracies use
those same masks (what training fits): each training example with its tied units, the
test set with untied draws (core/training/etd.py says how).

Determinism: the init comes from ``seed``; the shuffle of epoch e comes from a
generator seeded by (seed, e); the learning rate is a pure function of the step.
So a run resumed after epoch k continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from memloc.core.adapters import ClassifierAdapter
from memloc.core.checkpoints import load_into, load_tensors
from memloc.core.classifier.data import Dataset, inject_noise, load_dataset
from memloc.core.classifier.gradients import GroupGradientStats, group_stats, split_gradients
from memloc.core.classifier.preprocess import Preprocess
from memloc.core.classifier.run_results import EpochRecord, TrainSummary
from memloc.core.classifier.runs import Dynamics, RunFolder, TrainState
from memloc.core.classifier.splits import RunData
from memloc.core.errors import CheckpointError
from memloc.core.progress import Progress
from memloc.core.training.etd import EtdConfig, EtdLayout
from memloc.core.training.schedule import check_finite_loss, warmup_cosine
from memloc.core.training.subset_fit import epoch_batches
from memloc.core.training.zoo import ModelSpec, build_model, check_arch, default_width
from memloc.core.validation import at_least, fail, positive
from torch import nn

# Settings under which each architecture memorizes its noisy labels (noisy-train
# accuracy >= 0.99) on digits and on Fashion-MNIST-10k at 10-20% noise.
TRAINING_DEFAULTS: dict[str, dict] = {
    "mlp": {"epochs": 150, "batch_size": 32, "lr": 3e-3},
    "cnn": {"epochs": 40, "batch_size": 128, "lr": 2e-3},
    "resnet9": {"epochs": 40, "batch_size": 128, "lr": 2e-3},
    "vit": {"epochs": 150, "batch_size": 32, "lr": 1e-3},
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run; stored as the run's config.json."""

    data: str
    arch: str
    noise: float = 0.1
    epochs: int = 40
    limit: int | None = None
    seed: int = 0
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    width: float | None = None
    grad_accounting: bool = True
    init: str | None = None  # optional checkpoint to start from instead of a random init
    num_classes: int | None = None  # None: the training labels' 0..C-1
    preprocess: Preprocess | None = None  # channels, resize, normalization of the inputs
    etd: EtdConfig | None = None  # example-tied dropout; None: plain training

    @classmethod
    def for_arch(cls, data: str, arch: str, **overrides: object) -> TrainConfig:
        """A config with the architecture's defaults for whatever ``overrides`` leaves as None."""
        check_arch(arch)
        chosen = {k: v for k, v in overrides.items() if v is not None}
        return cls(data=data, arch=arch, **{**TRAINING_DEFAULTS[arch], **chosen})

    def __post_init__(self) -> None:
        check_arch(self.arch)
        if not 0.0 <= self.noise < 1.0:
            raise fail(self, "noise", f"must be in [0, 1), got {self.noise}")
        at_least(self, 1, "epochs", "batch_size")
        at_least(self, 0, "seed", "weight_decay")
        positive(self, "limit", "lr", "width")
        at_least(self, 2, "num_classes")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["width"] = self.width if self.width is not None else default_width(self.arch)
        if self.num_classes is None:
            del d["num_classes"]  # as run folders stored it before num_classes existed
        if self.preprocess is None or self.preprocess.is_identity:
            del d["preprocess"]  # likewise for runs from before preprocessing
        else:
            d["preprocess"] = self.preprocess.to_dict()
        if self.etd is None:
            del d["etd"]  # likewise for example-tied dropout
        return d


def _record(
    model: torch.nn.Module, data: RunData, epoch: int, began: float | None, etd: EtdLayout | None
) -> tuple[EpochRecord, np.ndarray, np.ndarray]:
    """Evaluate after ``epoch``; its seconds run from ``began`` to the end of the evaluation."""
    if etd is None:
        accs, loss, pred = data.evaluate(model)
    else:
        train_masks, test_masks = etd.tied_chunks(model), etd.tied_chunks(model, offset=len(data.given))
        accs, loss, pred = data.evaluate(model, train_context=train_masks, test_context=test_masks)
    seconds = 0.0 if began is None else time.perf_counter() - began
    return EpochRecord(epoch, **asdict(accs), train_loss=float(loss.mean()), seconds=seconds), loss, pred


def _require_finite_weights(tensors: dict[str, torch.Tensor], source: str) -> None:
    """NaN or inf starting weights would surface as a "diverged" loss; name them here."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            count = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{source}: tensor {name} holds {count} NaN/inf values; these weights cannot start a run"
            )


def _initial_model(config: TrainConfig, data: Dataset, trust_pickle: bool) -> tuple[ModelSpec, nn.Module]:
    """The seeded initialization, or the ``--init`` weights checked to be finite."""
    spec = ModelSpec(config.arch, data.input_shape, data.num_classes, config.to_dict()["width"])
    torch.manual_seed(config.seed)
    model = build_model(spec)
    if config.init:
        weights = load_tensors(config.init, trust_pickle=trust_pickle)
        _require_finite_weights(weights, config.init)
        load_into(model, weights, source=config.init)
    return spec, model


def _first_or_resumed(
    run: RunFolder,
    state: TrainState | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: RunData,
    groups: Sequence[str],
    etd: EtdLayout | None,
) -> tuple[Dynamics, tuple[EpochRecord, ...]]:
    """A fresh run records epoch 0 (the initialization); a resumed one loads its last epoch."""
    if state is None:
        first, loss, pred = _record(model, data, 0, None, etd)
        dynamics = Dynamics.first(loss, pred, data.labels.given, groups)
        run.save_epoch(0, model, optimizer, dynamics, (first,))
        return dynamics, (first,)
    load_into(model, run.load_checkpoint(state.epoch), source=str(run.checkpoint(state.epoch)))
    optimizer.load_state_dict(state.optimizer)
    return state.dynamics, state.history


def _load_data(
    config: TrainConfig, progress: Progress | None, notify: Callable[[str], None] | None
) -> Dataset:
    data = load_dataset(
        config.data,
        limit=config.limit,
        seed=config.seed,
        num_classes=config.num_classes,
        preprocess=config.preprocess,
        progress=progress,
        notify=notify,
    )
    if notify and config.limit and config.limit > len(data.y_train):
        notify(f"limit {config.limit} exceeds the {len(data.y_train)} training examples; using all")
    return data


def _step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: RunData,
    idx: torch.Tensor,
    etd: EtdLayout | None,
    groups: list[list[int]] | None,
    at: tuple[int, int],
) -> GroupGradientStats | None:
    """One optimizer step on the examples ``idx``; with ``groups``, its clean/noisy gradient accounting."""
    with etd.tied(model, idx) if etd else nullcontext():
        logits = model(data.x_train[idx]).float()
    losses = F.cross_entropy(logits, data.given[idx], reduction="none")
    check_finite_loss(losses, *at)
    stats = None
    if groups is not None:
        params = list(model.parameters())
        clean_g, noisy_g = split_gradients(losses, data.noisy[idx], params)
        for p, c, z in zip(params, clean_g, noisy_g, strict=True):
            p.grad = c + z
        stats = group_stats(clean_g, noisy_g, groups)
    else:
        optimizer.zero_grad(set_to_none=True)
        losses.mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return stats


def train_run(
    run: RunFolder,
    config: TrainConfig,
    device: torch.device,
    *,
    trust_pickle: bool = False,
    progress: Progress | None = None,
    notify: Callable[[str], None] | None = None,
) -> TrainSummary:
    """Train (or resume) the run in ``run`` and return its summary metrics.

    ``notify`` receives notes that do not stop the run (a limit above the data's size).

    config = TrainConfig.for_arch("digits", "cnn", noise=0.1)
    summary = train_run(RunFolder("runs/cnn"), config, torch.device("cpu"))
    summary.noisy_train_acc
    """
    data = _load_data(config, progress, notify)
    spec, model = _initial_model(config, data, trust_pickle)
    labels = inject_noise(data.y_train, config.noise, data.num_classes, config.seed)
    adapter = ClassifierAdapter.for_model(model)
    etd = EtdLayout.build(config.etd, adapter, config.seed) if config.etd else None
    inputs = [config.init] if config.init else []
    state = run.start(config.to_dict(), spec, labels, data.train_index, inputs=inputs)

    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    on_device = RunData.build(data, labels, device)

    dynamics, history = _first_or_resumed(run, state, model, optimizer, on_device, adapter.names, etd)

    params = list(model.parameters())
    index_of = {id(p): i for i, p in enumerate(params)}
    groups = [[index_of[id(p)] for p in adapter.group_parameters(model, g.name)] for g in adapter.groups]
    n = len(on_device.x_train)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = steps_per_epoch * config.epochs
    start_epoch = len(history)
    if progress:
        # A finished run resumed has start_epoch = epochs + 1: show its last epoch, done.
        progress(
            (start_epoch - 1) * steps_per_epoch,
            total,
            f"epoch {min(start_epoch, config.epochs)}/{config.epochs}",
        )

    for epoch in range(start_epoch, config.epochs + 1):
        began = time.perf_counter()
        model.train()
        everyone = torch.arange(n, device=device)
        step_stats = []
        for i, idx in enumerate(epoch_batches(everyone, config.seed, epoch, steps_per_epoch)):
            step = (epoch - 1) * steps_per_epoch + i
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine(config.lr, step, total)
            accounting = groups if config.grad_accounting else None
            stats = _step(model, optimizer, on_device, idx, etd, accounting, (epoch, i))
            if stats is not None:
                step_stats.append(stats)
            if progress:
                progress(step + 1, total, f"epoch {epoch}/{config.epochs}")
        row, loss, pred = _record(model, on_device, epoch, began, etd)
        history = (*history, row)
        dynamics = dynamics.append(loss, pred, labels.given, step_stats, len(adapter.groups))
        run.save_epoch(epoch, model, optimizer, dynamics, history)
    return run.finish(history)
