"""The ensemble folder: one subset ensemble of one run, resumable member by member.

Layout::

    ENSEMBLE/ensemble.json            the plan (EnsemblePlan.to_dict) and the run it belongs to
    ENSEMBLE/membership.npy           (K, N) bool, model k trains on example i
    ENSEMBLE/labels.npz               given (N,) and test_labels (M,), so loading needs no data set
    ENSEMBLE/models/0007/logits.npz   train_logits (N, C), test_logits (M, C): member 7 is done
    ENSEMBLE/models/0007/weights.safetensors   with --keep-weights, written before the logits

Every file is written atomically; ensemble.json is written last when a folder starts,
so a folder without it never looks like an ensemble.

Example::

    ens = load_ensemble("runs/mlp/ensembles/k16-keep0.5-seed0", RunFolder.open("runs/mlp"))
    ens.train_correct().mean()
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from memloc.core.checkpoints import atomic_write, atomic_write_text, save_tensors
from memloc.core.classifier.runs import RunFolder, load_npz
from memloc.core.ensemble.config import EnsemblePlan, run_fingerprint
from memloc.core.ensemble.logits import EnsembleLogits
from memloc.core.ensemble.membership import Membership, MembershipConfig
from memloc.core.errors import MemlocError


def default_folder(run: RunFolder, models: int, keep: float, seed: int) -> Path:
    return run.root / "ensembles" / f"k{models}-keep{keep:g}-seed{seed}"


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle

    atomic_write(path, write)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would add ".npy" to the temporary's name
        np.save(f, array)


def _first_difference(found: object, wanted: object, prefix: str = "") -> str | None:
    """The dotted name of the first field where two ensemble.json documents differ."""
    if isinstance(found, dict) and isinstance(wanted, dict):
        for key in sorted(set(found) | set(wanted)):
            if key not in found or key not in wanted:
                return prefix + key
            inner = _first_difference(found[key], wanted[key], f"{prefix}{key}.")
            if inner:
                return inner
        return None
    return None if found == wanted else prefix.rstrip(".")


def _lookup(document: dict, dotted: str) -> object:
    value: object = document
    for key in dotted.split("."):
        value = value.get(key, "absent") if isinstance(value, dict) else "absent"
    return value


class EnsembleFolder:
    """Paths and I/O of one ensemble folder (`start` creates it or checks it holds this plan)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.json_path = self.root / "ensemble.json"
        self.membership_path = self.root / "membership.npy"
        self.labels_path = self.root / "labels.npz"

    def member_dir(self, member: int) -> Path:
        return self.root / "models" / f"{member:04d}"

    def logits_path(self, member: int) -> Path:
        return self.member_dir(member) / "logits.npz"

    def weights_path(self, member: int) -> Path:
        return self.member_dir(member) / "weights.safetensors"

    def is_done(self, member: int, *, weights: bool = False) -> bool:
        return self.logits_path(member).is_file() and (not weights or self.weights_path(member).is_file())

    def done_members(self, models: int) -> list[int]:
        """The members of ``models`` whose logits are written."""
        return [k for k in range(models) if self.is_done(k)]

    def stored(self) -> dict:
        try:
            found = json.loads(self.json_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MemlocError(f"{self.root} is not an ensemble folder (no ensemble.json)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MemlocError(f"cannot read {self.json_path}: {exc}") from None
        if not isinstance(found, dict) or not isinstance(found.get("membership"), dict):
            raise MemlocError(f"{self.json_path} was not written by memloc ensemble")
        return found

    def check(self, plan: EnsemblePlan) -> None:
        """Refuse, naming the first differing field, a folder that holds another ensemble."""
        if not self.json_path.is_file():
            if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
                raise MemlocError(f"{self.root} exists and is not an ensemble folder; choose another --out")
            return
        found, wanted = self.stored(), plan.to_dict()
        field = _first_difference(found, wanted)
        if field == "run_fingerprint":
            raise MemlocError(
                f"{self.root} holds an ensemble of another run; choose another --out or remove that folder"
            )
        if field:
            there, asked = _lookup(found, field), _lookup(wanted, field)
            raise MemlocError(
                f"{self.root} holds another ensemble (its {field} is {there}, this request's {asked}); "
                "choose another --out or remove that folder"
            )

    def start(
        self, plan: EnsemblePlan, membership: Membership, given: np.ndarray, test_labels: np.ndarray
    ) -> None:
        """Create the folder for ``plan``, or check that it already holds it."""
        self.check(plan)
        if self.json_path.is_file():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.membership_path, lambda tmp: _save_npy(tmp, membership.matrix))
        _save_npz(self.labels_path, {"given": given, "test_labels": test_labels})
        atomic_write_text(self.json_path, json.dumps(plan.to_dict(), indent=2) + "\n")

    def save_member(
        self,
        member: int,
        train_logits: np.ndarray,
        test_logits: np.ndarray,
        weights: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Member ``member``'s results; the logits file, written last, is what "done" means."""
        if weights is not None:
            save_tensors(self.weights_path(member), weights)
        _save_npz(
            self.logits_path(member),
            {"train_logits": train_logits.astype(np.float32), "test_logits": test_logits.astype(np.float32)},
        )

    def membership(self) -> Membership:
        stored = self.stored()["membership"]
        config = MembershipConfig(int(stored["models"]), float(stored["keep"]), int(stored["seed"]))
        matrix = np.load(self.membership_path, allow_pickle=False)
        if matrix.dtype != bool or matrix.shape[0] != config.models:
            raise MemlocError(f"{self.membership_path} does not match {self.json_path}; it is damaged")
        return Membership(config, matrix)

    def member_logits(self, member: int) -> tuple[np.ndarray, np.ndarray]:
        z = load_npz(self.logits_path(member), ("train_logits", "test_logits"))
        return z["train_logits"], z["test_logits"]


def _fit_flags(stored: dict, run: RunFolder) -> str:
    """The training flags a rerun needs: those whose values differ from the run's own."""
    own = {} if run.is_imported() else run.config()["train"]
    fit = stored.get("fit", {})
    return "".join(
        f" --{name.replace('_', '-')} {fit[name]:g}"
        for name in ("epochs", "batch_size", "lr", "weight_decay")
        if name in fit and own.get(name, 0.0 if name == "weight_decay" else None) != fit[name]
    )


def load_ensemble(folder: str | Path | EnsembleFolder, run: RunFolder) -> EnsembleLogits:
    """The finished ensemble in ``folder``, checked to belong to ``run``."""
    ens = folder if isinstance(folder, EnsembleFolder) else EnsembleFolder(folder)
    stored = ens.stored()
    if stored.get("run_fingerprint") != run_fingerprint(run):
        raise MemlocError(
            f"{ens.root} is an ensemble of another run, not of {run.root}; give the run it was trained on"
        )
    membership = ens.membership()
    done = ens.done_members(membership.models)
    if len(done) < membership.models:
        m = membership.config
        raise MemlocError(
            f"{len(done)} of {m.models} models done in {ens.root}; rerun `memloc ensemble {run.root} "
            f"--models {m.models} --keep {m.keep:g} --seed {m.seed}{_fit_flags(stored, run)} "
            f"--out {ens.root}` to finish"
        )
    pairs = [ens.member_logits(k) for k in range(membership.models)]
    labels = load_npz(ens.labels_path, ("given", "test_labels"))
    return EnsembleLogits(
        membership,
        np.stack([p[0] for p in pairs]),
        np.stack([p[1] for p in pairs]),
        labels["given"],
        labels["test_labels"],
    )
