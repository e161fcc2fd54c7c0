"""Train a subset ensemble of a run: K members on balanced seeded subsets (issue #14).

The membership is balanced (every example in round(keep * K) members, Carlini et al.
2022; ``keep=0.7`` gives Feldman & Zhang 2020's 70% subsets). Each member is one
idempotent job (core/ensemble/members.py) handed to an executor (core/executors.py),
or all members are trained together as one batched model (core/ensemble/batched.py).
Members already done are skipped, so a rerun resumes; the logits do not depend on the
executor or the order.

Example::

    summary = train_ensemble(
        RunFolder.open("runs/mlp"), EnsembleConfig(models=16, keep=0.5), SequentialExecutor(), device
    )
    ens = load_ensemble(summary.folder, RunFolder.open("runs/mlp"))
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from memloc.core.classifier.runs import RunFolder
from memloc.core.classifier.splits import RunData
from memloc.core.ensemble.batched import BatchedExecutor, check_batchable, train_batched
from memloc.core.ensemble.config import EnsembleConfig, plan_ensemble
from memloc.core.ensemble.folder import EnsembleFolder, default_folder, load_ensemble
from memloc.core.ensemble.logits import EnsembleLogits
from memloc.core.ensemble.members import MemberContext, MemberJob, build_member, run_member_job
from memloc.core.executors import Executor
from memloc.core.progress import Progress, offset


@dataclass(frozen=True)
class EnsembleSummary:
    """What one `train_ensemble` call left: the folder, and how its members do."""

    folder: Path
    models: int
    trained: int  # members this call trained (the rest were done already)
    executor: str
    seconds: float
    epochs: int
    steps_per_epoch: int
    in_acc: float  # mean over members of accuracy on their own training examples (given labels)
    out_acc: float  # ... on the training examples they did not train on
    test_acc: float  # ... on the test set


def train_ensemble(
    run: RunFolder,
    config: EnsembleConfig,
    executor: Executor | BatchedExecutor,
    device: torch.device,
    *,
    out: str | Path | None = None,
    progress: Progress | None = None,
) -> EnsembleSummary:
    """Train (or finish) the ensemble ``config`` of ``run`` into ``out`` (default: under the run)."""
    began = time.perf_counter()
    plan = plan_ensemble(run, config)
    folder = EnsembleFolder(out or default_folder(run, config.models, config.keep, config.seed))
    folder.check(plan)  # every refusal comes before the first file is written
    if isinstance(executor, BatchedExecutor):
        check_batchable(build_member(run, 0, config.seed))
    data = RunData.load(run, torch.device("cpu"))
    folder.start(plan, plan.draw(), data.labels.given, data.y_test.numpy())
    pending = [k for k in range(config.models) if not folder.is_done(k, weights=config.keep_weights)]
    tracked = offset(progress, config.models - len(pending), config.models)
    if tracked and pending:
        tracked(0, len(pending), "")
    if isinstance(executor, BatchedExecutor):
        if pending:
            ctx = MemberContext.load(run, folder, device)
            train_batched(
                ctx,
                pending,
                models_per_pass=executor.models_per_pass,
                keep_weights=config.keep_weights,
                progress=tracked,
            )
    else:
        jobs = [
            MemberJob(
                str(run.root),
                str(folder.root),
                k,
                _job_device(executor, device),
                config.keep_weights,
                _job_threads(executor),
            )
            for k in pending
        ]
        executor.map(run_member_job, jobs, progress=tracked)
    ensemble = load_ensemble(folder, run)
    in_acc, out_acc, test_acc = member_accuracies(ensemble)
    return EnsembleSummary(
        folder.root,
        config.models,
        len(pending),
        executor.name,
        time.perf_counter() - began,
        plan.fit.epochs,
        plan.steps_per_epoch,
        in_acc,
        out_acc,
        test_acc,
    )


def _job_threads(executor: Executor) -> int | None:
    """A Ray job trains on as many threads as it holds CPUs (at least one), so that its CPU
    rounding, and with it its logits, equal a sequential run's on that many threads."""
    cpus = getattr(executor, "cpus_per_job", None)
    return None if cpus is None else max(1, int(cpus))


def _job_device(executor: Executor, device: torch.device) -> str:
    """The device a job names: an executor that hands each job its own GPUs (Ray with GPUs per
    model makes them the only visible ones) gets plain "cuda", the first GPU the job sees."""
    if device.type == "cuda" and getattr(executor, "gpus_per_job", 0) > 0:
        return "cuda"
    return str(device)


def member_accuracies(ensemble: EnsembleLogits) -> tuple[float, float, float]:
    """Mean over members of accuracy on their in examples, their out examples, and the test set."""
    correct, inside = ensemble.train_correct(), ensemble.membership.matrix
    per_in = (correct & inside).sum(1) / np.maximum(inside.sum(1), 1)
    per_out = (correct & ~inside).sum(1) / np.maximum((~inside).sum(1), 1)
    return float(per_in.mean()), float(per_out.mean()), float(ensemble.test_correct().mean())
