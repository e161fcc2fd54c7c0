"""What a subset ensemble is asked to be, and the plan it resolves to against one run.

`EnsembleConfig` is the request (K, keep, seed, optional training overrides);
`plan_ensemble` turns it into an `EnsemblePlan`: the membership, the fit settings read
from the run's config.json where not overridden, the steps per epoch every member
takes, and the run's fingerprint. The plan is what ensemble.json stores, so a rerun
can tell whether a folder holds the same ensemble.

Example::

    plan = plan_ensemble(RunFolder.open("runs/mlp"), EnsembleConfig(models=16, keep=0.5))
    plan.fit.epochs, plan.steps_per_epoch
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from memloc.core.classifier.runs import RunFolder
from memloc.core.ensemble.membership import Membership, MembershipConfig, draw_membership
from memloc.core.errors import MemlocError
from memloc.core.training.subset_fit import FitConfig
from memloc.core.validation import at_least, positive

SCHEMA_VERSION = 1
_STREAM_MEMBER = 0x454E53  # members' seeds: a stream apart from the membership draw


@dataclass(frozen=True)
class EnsembleConfig:
    """K models on balanced subsets; None training fields come from the run's config.json."""

    models: int
    keep: float = 0.5
    seed: int = 0
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    keep_weights: bool = False

    def __post_init__(self) -> None:
        MembershipConfig(self.models, self.keep, self.seed)  # its errors name models, keep, seed
        at_least(self, 1, "epochs", "batch_size")
        at_least(self, 0, "weight_decay")
        positive(self, "lr")

    @property
    def membership(self) -> MembershipConfig:
        return MembershipConfig(self.models, self.keep, self.seed)


@dataclass(frozen=True)
class EnsemblePlan:
    """Everything that determines an ensemble's logits; ensemble.json holds its `to_dict`."""

    run_fingerprint: str
    membership: MembershipConfig
    fit: FitConfig  # its seed is unused: member k trains with member_seed(membership.seed, k)
    steps_per_epoch: int
    examples: int

    def member_fit(self, member: int) -> FitConfig:
        return FitConfig(
            self.fit.epochs,
            self.fit.batch_size,
            self.fit.lr,
            self.fit.weight_decay,
            seed=member_seed(self.membership.seed, member),
        )

    def draw(self) -> Membership:
        """The membership matrix (a pure function of the membership config and N)."""
        return draw_membership(self.membership, self.examples)

    def to_dict(self) -> dict:
        fit = asdict(self.fit)
        del fit["seed"]
        return {
            "schema_version": SCHEMA_VERSION,
            "run_fingerprint": self.run_fingerprint,
            "membership": asdict(self.membership),
            "fit": fit,
            "steps_per_epoch": self.steps_per_epoch,
            "examples": self.examples,
        }


def plan_from_dict(stored: dict) -> EnsemblePlan:
    """The inverse of `EnsemblePlan.to_dict` (ensemble.json back into a plan)."""
    if stored.get("schema_version") != SCHEMA_VERSION:
        raise MemlocError(
            f"ensemble.json has schema version {stored.get('schema_version')}, this memloc reads "
            f"{SCHEMA_VERSION}; retrain the ensemble into a new folder"
        )
    m, fit = stored["membership"], stored["fit"]
    return EnsemblePlan(
        str(stored["run_fingerprint"]),
        MembershipConfig(int(m["models"]), float(m["keep"]), int(m["seed"])),
        FitConfig(int(fit["epochs"]), int(fit["batch_size"]), float(fit["lr"]), float(fit["weight_decay"])),
        steps_per_epoch=int(stored["steps_per_epoch"]),
        examples=int(stored["examples"]),
    )


def member_seed(seed: int, member: int) -> int:
    """Member ``member``'s seed (init, then shuffles), a pure function of (ensemble seed, member)."""
    state = np.random.SeedSequence([seed, member, _STREAM_MEMBER]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


def run_fingerprint(run: RunFolder) -> str:
    """SHA-256 of the run's config and its training set (given labels and train_index)."""
    labels, index = run.load_noise()
    h = hashlib.sha256(json.dumps(run.config(), sort_keys=True).encode())
    for array in (labels.given, index):
        a = np.ascontiguousarray(array)
        h.update(f"|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def fit_settings(run: RunFolder, config: EnsembleConfig) -> FitConfig:
    """The run's own epochs, batch size, lr and weight decay, where the config leaves them None."""
    overrides: dict[str, Any] = {
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "weight_decay": config.weight_decay,
    }
    if run.is_imported():
        missing = [name for name in ("epochs", "lr", "batch_size") if overrides[name] is None]
        if missing:
            flags = ", ".join("--" + name.replace("_", "-") for name in missing)
            raise MemlocError(f"{run.root} was imported, so its training settings are unknown: give {flags}")
        stored: dict = {"weight_decay": 0.0}
    else:
        stored = run.config()["train"]
    chosen: dict[str, Any] = {
        name: stored.get(name) if value is None else value for name, value in overrides.items()
    }
    return FitConfig(
        int(chosen["epochs"]),
        int(chosen["batch_size"]),
        float(chosen["lr"]),
        float(chosen["weight_decay"] or 0.0),
    )


def plan_ensemble(run: RunFolder, config: EnsembleConfig) -> EnsemblePlan:
    """The plan of ``config`` on ``run``: S = ceil(max_k |subset_k| / batch_size) for every member."""
    fit = fit_settings(run, config)
    labels, _ = run.load_noise()
    examples = len(labels.given)
    membership = draw_membership(config.membership, examples)
    largest = int(membership.matrix.sum(1).max())
    return EnsemblePlan(
        run_fingerprint(run),
        config.membership,
        fit,
        steps_per_epoch=max(1, math.ceil(largest / fit.batch_size)),
        examples=examples,
    )
