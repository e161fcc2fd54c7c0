"""The run folder: one training run's config, labels, checkpoints and dynamics.

Layout (documented in the README):

    RUN_DIR/config.json        {"train": TrainConfig, "model": ModelSpec}
    RUN_DIR/noise.npz          given, original, mask, train_index
    RUN_DIR/checkpoints/epoch_000.safetensors   the initialization; one file per epoch
    RUN_DIR/checkpoints/train_state.pt          optimizer state and history (for resuming)
    RUN_DIR/dynamics.npz       per-example loss/pred/correct per epoch; gradient accounting
    RUN_DIR/metrics.json       a Report: per-epoch history and the final summary

Every file is written atomically, and metrics.json says ``"complete": false`` until
the last epoch is saved, so an interrupted run never looks finished.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from memloc.core.adapters import ClassifierAdapter
from memloc.core.checkpoints import atomic_write, atomic_write_text, load_into, load_tensors, save_tensors
from memloc.core.classifier.data import Dataset, NoisyLabels, load_dataset
from memloc.core.classifier.gradients import GroupGradientStats
from memloc.core.classifier.hf_keys import to_module_names
from memloc.core.classifier.manifest import MANIFEST_NAME, Manifest, same_files
from memloc.core.classifier.model_source import (
    ModelSource,
    build_classifier,
    classifier_adapter,
    source_from_dict,
    source_label,
)
from memloc.core.classifier.preprocess import Preprocess
from memloc.core.classifier.run_results import EpochRecord, TrainResult, TrainSummary
from memloc.core.errors import RunFolderError
from memloc.core.finite import check_finite_weights
from memloc.core.report import Report, provenance, to_jsonable
from memloc.core.training.etd import EtdConfig
from torch import nn

_EPOCH_RE = re.compile(r"^epoch_(\d{3,})\.safetensors$")


@dataclass(frozen=True)
class Dynamics:
    """Row e describes checkpoint e: loss, prediction and correctness on the given label.

    Gradient arrays have one row per trained epoch (row e-1 for epoch e) and one
    column per layer group.
    """

    loss: np.ndarray
    pred: np.ndarray
    correct: np.ndarray
    grad_clean: np.ndarray
    grad_noisy: np.ndarray
    grad_cosine: np.ndarray
    groups: tuple[str, ...]
    # "training": means over each epoch's steps; "checkpoint": full-data gradients at each
    # imported checkpoint (core/classifier/dynamics_pass.py).
    gradient_kind: str = "training"

    @classmethod
    def first(
        cls,
        loss: np.ndarray,
        pred: np.ndarray,
        given: np.ndarray,
        groups: Sequence[str],
        gradient_kind: str = "training",
    ) -> Dynamics:
        empty = np.zeros((0, len(groups)))
        return cls(
            loss[None].astype(np.float32),
            pred[None].astype(np.int16),
            (pred == given)[None],
            empty,
            empty,
            empty,
            tuple(groups),
            gradient_kind,
        )

    @classmethod
    def empty(cls, examples: int, groups: Sequence[str], gradient_kind: str = "training") -> Dynamics:
        """No rows yet (an import that has not read a checkpoint)."""
        rows = np.zeros((0, examples))
        grads = np.zeros((0, len(groups)))
        return cls(
            rows.astype(np.float32),
            rows.astype(np.int16),
            rows.astype(bool),
            grads,
            grads,
            grads,
            tuple(groups),
            gradient_kind,
        )

    def placeholder_first(self) -> Dynamics:
        """Row 0 for a run without its initialization: NaN loss, prediction -1, never correct."""
        n = self.loss.shape[1]
        return Dynamics(
            np.full((1, n), np.nan, dtype=np.float32),
            np.full((1, n), -1, dtype=np.int16),
            np.zeros((1, n), dtype=bool),
            self.grad_clean,
            self.grad_noisy,
            self.grad_cosine,
            self.groups,
            self.gradient_kind,
        )

    def append(
        self,
        loss: np.ndarray,
        pred: np.ndarray,
        given: np.ndarray,
        steps: Sequence[GroupGradientStats],
        n_groups: int,
    ) -> Dynamics:
        if steps:
            clean = np.mean([s.clean_norm for s in steps], axis=0)
            noisy = np.mean([s.noisy_norm for s in steps], axis=0)
            cos = np.array([s.cosine for s in steps], dtype=float)
            with np.errstate(all="ignore"):
                valid = ~np.isnan(cos)
                cosine = np.where(valid.any(0), np.nansum(cos, 0) / np.maximum(valid.sum(0), 1), np.nan)
        else:
            clean = noisy = cosine = np.full(n_groups, np.nan)
        return Dynamics(
            np.concatenate([self.loss, loss[None].astype(np.float32)]),
            np.concatenate([self.pred, pred[None].astype(np.int16)]),
            np.concatenate([self.correct, (pred == given)[None]]),
            np.concatenate([self.grad_clean, clean[None]]),
            np.concatenate([self.grad_noisy, noisy[None]]),
            np.concatenate([self.grad_cosine, cosine[None]]),
            self.groups,
            self.gradient_kind,
        )

    def truncate(self, epoch: int) -> Dynamics:
        return Dynamics(
            self.loss[: epoch + 1],
            self.pred[: epoch + 1],
            self.correct[: epoch + 1],
            self.grad_clean[:epoch],
            self.grad_noisy[:epoch],
            self.grad_cosine[:epoch],
            self.groups,
            self.gradient_kind,
        )

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "loss": self.loss,
            "pred": self.pred,
            "correct": self.correct,
            "grad_clean_norm": self.grad_clean,
            "grad_noisy_norm": self.grad_noisy,
            "grad_cosine": self.grad_cosine,
            "groups": np.array(self.groups),
            "gradient_kind": np.array(self.gradient_kind),
        }

    @classmethod
    def load(cls, path: Path) -> Dynamics:
        names = ("loss", "pred", "correct", "grad_clean_norm", "grad_noisy_norm", "grad_cosine", "groups")
        z = load_npz(path, names)
        kind = (
            load_npz(path, ("gradient_kind",))["gradient_kind"] if _has(path, "gradient_kind") else "training"
        )
        return cls(
            loss=z["loss"],
            pred=z["pred"],
            correct=z["correct"],
            grad_clean=z["grad_clean_norm"],
            grad_noisy=z["grad_noisy_norm"],
            grad_cosine=z["grad_cosine"],
            groups=tuple(str(g) for g in z["groups"]),
            gradient_kind=str(kind),
        )


def _has(path: Path, name: str) -> bool:
    """Whether an npz archive holds ``name`` (runs from before a field was added lack it)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return isinstance(z, np.lib.npyio.NpzFile) and name in z.files
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        return False


def load_npz(path: Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The named arrays of an npz archive; a damaged or foreign file is one line naming it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("it holds a single array")
            missing = [name for name in names if name not in z.files]
            if missing:
                raise RunFolderError(f"{path} lacks the array {missing[0]!r}; it was not written by memloc")
            return {name: z[name] for name in names}
    except FileNotFoundError:
        raise RunFolderError(f"{path} is missing; the run folder is incomplete") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        # numpy reads a file that is not a zip archive as a pickle, hence its misleading message.
        reason = "it is not a zip archive" if not zipfile.is_zipfile(path) else str(exc).splitlines()[0]
        raise RunFolderError(
            f"{path} is not a valid npz archive ({reason}); it is damaged, restore or retrain the run"
        ) from None


@dataclass(frozen=True)
class TrainState:
    """What a resumed run needs: the last finished epoch, optimizer state, history."""

    epoch: int
    optimizer: dict
    dynamics: Dynamics
    history: tuple[EpochRecord, ...]


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle

    atomic_write(path, write)


class RunFolder:
    """Paths and I/O of one run folder.

    run = RunFolder.open("runs/cnn")  # an existing run; RunFolder(path) for a new one
    model, adapter = run.load_model()
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config_path = self.root / "config.json"
        self.noise_path = self.root / "noise.npz"
        self.checkpoints = self.root / "checkpoints"
        self.state_path = self.checkpoints / "train_state.pt"
        self.dynamics_path = self.root / "dynamics.npz"
        self.metrics_path = self.root / "metrics.json"
        self.manifest_path = self.checkpoints / MANIFEST_NAME  # an imported run's checkpoints

    # --- opening an existing run -----------------------------------------------------

    @classmethod
    def open(cls, root: str | Path) -> RunFolder:
        """An existing run folder with a config and at least one checkpoint."""
        run = cls(root)
        if run.root.is_file():
            raise RunFolderError(
                f"{run.root} is a file, not a run folder; give the folder a run was trained into"
            )
        if not run.root.is_dir():
            raise RunFolderError(f"run folder {run.root} does not exist; train a run into it first")
        if not run.config_path.is_file():
            raise RunFolderError(f"{run.root} is not a memloc run folder (no config.json)")
        if not run.epochs():
            raise RunFolderError(f"{run.root} has no checkpoints; train it first")
        return run

    def config(self) -> dict:
        try:
            config = json.loads(self.config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunFolderError(f"cannot read {self.config_path}: {exc}") from None
        for key in ("train", "model"):
            if not isinstance(config, dict) or not isinstance(config.get(key), dict):
                raise RunFolderError(
                    f"{self.config_path} lacks the field {key!r}; it was not written by memloc train"
                )
        return config

    def spec(self) -> ModelSource:
        """Where the run's classifier comes from: the zoo, a Hugging Face config, or a factory."""
        return source_from_dict(self.config()["model"])

    def model_id(self) -> str:
        """``arch@data``, the model id of every report on this run."""
        return f"{source_label(self.spec())}@{self.config()['train']['data']}"

    def seed(self) -> int:
        return int(self.config()["train"]["seed"])

    def planned_epochs(self) -> int:
        """The epoch the run's training ends at (its final checkpoint)."""
        return int(self.config()["train"]["epochs"])

    def preprocess(self) -> Preprocess:
        """The channels, resize and normalization the run's inputs got (the identity if none)."""
        return Preprocess.from_dict(self.config()["train"].get("preprocess"))

    def etd(self) -> EtdConfig | None:
        """The run's example-tied dropout settings, or None for a plain run (and runs from before it)."""
        stored = self.config()["train"].get("etd")
        return EtdConfig.from_dict(stored) if stored else None

    def dataset(self) -> Dataset:
        """The run's data, loaded from the same source, subset, classes and preprocessing as in training."""
        train = self.config()["train"]
        return load_dataset(
            train["data"],
            limit=train["limit"],
            seed=train["seed"],
            num_classes=train.get("num_classes"),
            preprocess=self.preprocess(),
        )

    def checkpoint(self, epoch: int) -> Path:
        """The file of ``epoch``: in the run folder, or where an imported run's manifest says."""
        if self.is_imported():
            manifest = self.manifest()
            if epoch in manifest.epochs():
                return Path(manifest.entry(epoch).path)
        return self.checkpoints / f"epoch_{epoch:03d}.safetensors"

    # --- imported runs (memloc import) -----------------------------------------------

    def is_imported(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> Manifest:
        return Manifest.read(self.manifest_path)

    def import_info(self) -> dict | None:
        """config.json's ``import`` section (source, labels files, time), or None for a trained run."""
        info = self.config().get("import")
        return info if isinstance(info, dict) else None

    def mask_known(self) -> bool:
        """False for an imported run given neither true labels nor a noise mask."""
        info = self.import_info()
        return info is None or info.get("mask") != "unknown"

    def mask_note(self) -> str | None:
        """The one line analyses print when they cannot split noisy from clean examples."""
        if self.mask_known():
            return None
        return (
            f"{self.root} was imported without --true-labels or --noise-mask, so which examples are "
            "noisy is unknown: noisy/clean splits are shown as n/a"
        )

    def initialization(self) -> dict[str, torch.Tensor]:
        """Epoch 0's weights; an import without ``--init`` says what it needs instead of using another point."""
        if 0 not in self.epochs() and self.is_imported():
            raise RunFolderError(
                f"{self.root} has no initialization (epoch 0); retraining from it needs "
                "the run imported with memloc import --init FILE"
            )
        return self.load_checkpoint(0)

    def start_import(
        self, config: dict, labels: NoisyLabels, train_index: np.ndarray, manifest: Manifest, stamp: str
    ) -> None:
        """Create an imported run's folder, or check it holds this same import (refused otherwise)."""
        wanted = to_jsonable(config)
        if self.config_path.is_file():
            found = self.config()
            stored = {k: v for k, v in found.items()}
            stored["import"] = {k: v for k, v in (found.get("import") or {}).items() if k != "imported_at"}
            keys = _diff_keys(stored, wanted)
            if not keys and (not self.is_imported() or not same_files(self.manifest(), manifest)):
                keys = ["checkpoints (files or their bytes)"]
            if keys:
                raise RunFolderError(
                    f"{self.root} holds a different run (differs in: {', '.join(keys)}); "
                    "choose another run folder or remove that one"
                )
            return
        if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
            raise RunFolderError(
                f"{self.root} exists and is not a memloc run folder; choose another run folder"
            )
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        _save_npz(self.noise_path, {**labels.to_npz(), "train_index": train_index})
        manifest.save(self.manifest_path)
        config = {**wanted, "import": {**wanted["import"], "imported_at": stamp}}
        atomic_write_text(self.config_path, json.dumps(config, indent=2) + "\n")

    def imported_history(self) -> tuple[EpochRecord, ...]:
        """The checkpoints an earlier, possibly interrupted, import finished (none before the first)."""
        if not self.metrics_path.is_file() or not self.dynamics_path.is_file():
            return ()
        history = self.result().history
        rows = self.load_dynamics().loss.shape[0]
        return tuple(h for h in history if h.epoch < rows)

    def save_imported_epoch(self, dynamics: Dynamics, history: Sequence[EpochRecord]) -> None:
        # Dynamics first, metrics last: metrics never name a checkpoint whose rows are missing.
        _save_npz(self.dynamics_path, dynamics.arrays())
        self._write_metrics(history, complete=False)

    def epochs(self) -> list[int]:
        if self.is_imported():
            return self.manifest().epochs()
        if not self.checkpoints.is_dir():
            return []
        found = (_EPOCH_RE.match(p.name) for p in self.checkpoints.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def require_epochs(self, epochs: Iterable[int]) -> None:
        """Refuse, naming the first missing epoch and the available ones, unless all have checkpoints."""
        available = self.epochs()
        for epoch in epochs:
            if epoch == 0 and 0 not in available and self.is_imported():
                raise RunFolderError(
                    f"epoch 0 (the initialization) is not in {self.root}; rewinding to it needs "
                    "the run imported with memloc import --init FILE"
                )
            if epoch not in available:
                raise RunFolderError(
                    f"epoch {epoch} is not in {self.root}; available epochs: {_ranges(available)}"
                )

    def load_checkpoint(self, epoch: int) -> dict[str, torch.Tensor]:
        self.require_epochs([epoch])
        if self.is_imported():
            return self._as_module_names(self.manifest().load(epoch))
        return load_tensors(self.checkpoint(epoch))

    def _as_module_names(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """An imported checkpoint's tensors under the model's names (transformers saves some under others)."""
        if not hasattr(self, "_template"):
            self._template = build_classifier(self.spec())  # built once per folder, only for imports
        return dict(to_module_names(self._template, tensors))

    def load_model(self, epoch: int | None = None) -> tuple[nn.Module, ClassifierAdapter]:
        """The zoo model at ``epoch`` (default: the last), on the CPU, in eval mode."""
        epoch = self.epochs()[-1] if epoch is None else epoch
        source = self.spec()
        model = build_classifier(source)
        load_into(model, self.load_checkpoint(epoch), source=str(self.checkpoint(epoch)))
        check_finite_weights(model, source=str(self.checkpoint(epoch)))
        return model.eval(), classifier_adapter(source, model)

    def adapter(self) -> ClassifierAdapter:
        """The run's layer groups, from a freshly built model (no checkpoint is read)."""
        source = self.spec()
        return classifier_adapter(source, build_classifier(source))

    def load_noise(self) -> tuple[NoisyLabels, np.ndarray]:
        z = load_npz(self.noise_path, ("given", "original", "mask", "train_index"))
        return NoisyLabels(z["given"], z["original"], z["mask"]), z["train_index"]

    def load_dynamics(self) -> Dynamics:
        if not self.dynamics_path.is_file():
            raise RunFolderError(f"{self.root} has no dynamics.npz; the run did not finish an epoch")
        return Dynamics.load(self.dynamics_path)

    # --- writing a run -------------------------------------------------------------

    def start(
        self,
        config: dict,
        spec: ModelSource,
        labels: NoisyLabels,
        train_index: np.ndarray,
        inputs: Iterable[str] = (),
    ) -> TrainState | None:
        """Create the folder, or check it holds this same run; return its saved state."""
        wanted = to_jsonable({"train": config, "model": spec.to_dict()})
        for source in inputs:
            if Path(source).resolve().is_relative_to(self.root.resolve()):
                raise RunFolderError(f"the input {source} lies inside the output folder {self.root}")
        if self.config_path.is_file():
            found = self.config()
            if found != wanted:
                keys = _diff_keys(found, wanted)
                raise RunFolderError(
                    f"{self.root} holds a different run (differs in: {', '.join(keys)}); "
                    "choose another run folder or remove that one"
                )
            return self.load_state()
        if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
            raise RunFolderError(
                f"{self.root} exists and is not a memloc run folder; choose another run folder"
            )
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        _save_npz(self.noise_path, {**labels.to_npz(), "train_index": train_index})
        atomic_write_text(self.config_path, json.dumps(wanted, indent=2) + "\n")
        return None

    def load_state(self) -> TrainState | None:
        if not self.state_path.is_file():
            return None
        fix = "remove it to train the run again from the start"
        try:
            raw = torch.load(self.state_path, map_location="cpu", weights_only=True)
            epoch = int(raw["epoch"])
            history = tuple(EpochRecord.from_dict(h) for h in raw["history"][: epoch + 1])
            optimizer = raw["optimizer"]
        except pickle.UnpicklingError as exc:
            if "GLOBAL" in str(exc):  # a planted object: memloc's own states hold plain data only
                raise RunFolderError(
                    f"{self.state_path} needs code execution to load, so it was not written by memloc "
                    f"and was refused; {fix}"
                ) from None
            raise RunFolderError(f"{self.state_path} is damaged (not a training state); {fix}") from None
        except (RuntimeError, EOFError, OSError, KeyError, TypeError, ValueError, AttributeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RunFolderError(f"{self.state_path} is damaged ({reason[:120]}); {fix}") from None
        return TrainState(epoch, optimizer, self.load_dynamics().truncate(epoch), history)

    def save_epoch(
        self,
        epoch: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        dynamics: Dynamics,
        history: Sequence[EpochRecord],
    ) -> None:
        # Order matters for resuming: the checkpoint and dynamics first, the state last,
        # so the state never names an epoch whose files are missing.
        save_tensors(self.checkpoint(epoch), model.state_dict())
        _save_npz(self.dynamics_path, dynamics.arrays())
        buffer = io.BytesIO()
        rows = [h.to_dict() for h in history]  # plain dicts: the state is read with weights_only
        torch.save({"epoch": epoch, "optimizer": optimizer.state_dict(), "history": rows}, buffer)
        atomic_write(self.state_path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
        self._write_metrics(history, complete=False)

    def finish(self, history: Sequence[EpochRecord]) -> TrainSummary:
        return self._write_metrics(history, complete=True)

    def _write_metrics(self, history: Sequence[EpochRecord], complete: bool) -> TrainSummary:
        config = self.config()
        labels, _ = self.load_noise()
        summary = TrainSummary.of(
            history, len(labels.given), int(labels.mask.sum()), complete, str(self.root)
        )
        train = config["train"]
        results = TrainResult(tuple(history), summary).results_dict()
        if self.is_imported():
            results |= self._imported_results(history, config["import"]["gradient_kind"])
        report = Report(
            method="import" if self.is_imported() else "train",
            model_id=self.model_id(),
            config=config,
            results=results,
            metrics=summary.to_dict(),
            provenance=provenance(train["seed"], {"init": train["init"]} if train.get("init") else {}),
        )
        report.save(self.metrics_path)
        return summary

    def _imported_results(self, history: Sequence[EpochRecord], gradient_kind: str) -> dict:
        """Per checkpoint of an import: its accuracy on the given labels, and its file, step and epoch."""
        correct = self.load_dynamics().correct
        manifest = self.manifest()
        rows = []
        for h in history:
            entry = manifest.entry(h.epoch)
            rows.append(
                {
                    "epoch": h.epoch,
                    "train_acc": float(correct[h.epoch].mean()),
                    "step": entry.step,
                    "source_epoch": entry.source_epoch,
                    "path": entry.path,
                }
            )
        return {"gradient_kind": gradient_kind, "checkpoints": rows}

    def summary(self) -> TrainSummary:
        return self.result().summary

    def result(self) -> TrainResult:
        """The stored per-epoch history and summary of metrics.json."""
        if not self.metrics_path.is_file():
            raise RunFolderError(f"{self.root} has no metrics.json; the run has not finished an epoch")
        return TrainResult.from_report(Report.load(self.metrics_path))


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


def _ranges(values: list[int]) -> str:
    if not values:
        return "none"
    return f"{values[0]}-{values[-1]}" if values == list(range(values[0], values[-1] + 1)) else str(values)
