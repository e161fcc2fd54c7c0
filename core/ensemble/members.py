"""Building and training ONE ensemble member, and the job any executor runs for it.

Member k: ``torch.manual_seed(member_seed(seed, k))``, then a fresh model built exactly
as the run builds its own (`build_classifier` of the run's model source), trained with
`core.training.subset_fit.fit` on its subset of the given (noisy) labels for the plan's
steps per epoch, then its eval-mode float32 logits on all N training and M test examples.

Example::

    run_member_job(MemberJob("runs/mlp", "runs/mlp/ensembles/k16-keep0.5-seed0", member=3, device="cpu"))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from memloc.core.classifier.runs import RunFolder
from memloc.core.classifier.splits import RunData
from memloc.core.ensemble.config import EnsemblePlan, member_seed, plan_from_dict
from memloc.core.ensemble.folder import EnsembleFolder
from memloc.core.ensemble.membership import Membership
from memloc.core.training.subset_fit import fit
from torch import nn

EVAL_BATCH = 1024


@dataclass(frozen=True)
class MemberJob:
    """One member to train: plain strings, so that it pickles to any executor's workers."""

    run_dir: str
    ensemble_dir: str
    member: int
    device: str
    keep_weights: bool = False
    threads: int | None = None  # torch's CPU threads for this job; None: the process's own


@dataclass(frozen=True)
class MemberContext:
    """What every member of one ensemble shares: the run's data on a device, and the plan."""

    run: RunFolder
    folder: EnsembleFolder
    plan: EnsemblePlan
    membership: Membership
    x_train: torch.Tensor
    given: torch.Tensor
    x_test: torch.Tensor

    @classmethod
    def load(cls, run: RunFolder, folder: EnsembleFolder, device: torch.device) -> MemberContext:
        data = RunData.load(run, device)
        plan = plan_from_dict(folder.stored())
        return cls(run, folder, plan, folder.membership(), data.x_train, data.given, data.x_test)


def build_member(run: RunFolder, member: int, seed: int) -> nn.Module:
    """Member ``member``'s fresh initialization (on the CPU), from (ensemble seed, member) alone."""
    from memloc.core.classifier.model_source import build_classifier

    torch.manual_seed(member_seed(seed, member))
    return build_classifier(run.spec())


def placed(model: nn.Module, ctx: MemberContext) -> nn.Module:
    """The member on its inputs' device, and in their dtype when that is a float dtype.

    A context of float64 inputs trains float64 members: how benchmarks/ensemble.py checks
    that two trainers compute the same thing beyond float32 rounding, which long training
    amplifies.
    """
    dtype = ctx.x_train.dtype
    return model.to(ctx.x_train.device, dtype) if dtype.is_floating_point else model.to(ctx.x_train.device)


def final_logits(model: nn.Module, x: torch.Tensor, batch: int = EVAL_BATCH) -> np.ndarray:
    """Eval-mode float32 logits of every row of ``x``, in chunks of ``batch``."""
    model.eval()
    with torch.inference_mode():
        out = [model(x[i : i + batch]).float().cpu() for i in range(0, len(x), batch)]
    return torch.cat(out).numpy()


def save_trained(ctx: MemberContext, member: int, model: nn.Module, keep_weights: bool) -> None:
    """Write a trained member's logits (and weights) into its folder: the one way members finish."""
    weights = model.state_dict() if keep_weights else None
    ctx.folder.save_member(member, final_logits(model, ctx.x_train), final_logits(model, ctx.x_test), weights)


def train_member(ctx: MemberContext, member: int, keep_weights: bool = False) -> None:
    """Train member ``member`` on its subset and save it."""
    model = placed(build_member(ctx.run, member, ctx.plan.membership.seed), ctx)
    fit(
        model,
        ctx.x_train,
        ctx.given,
        ctx.membership.subset(member),
        ctx.plan.member_fit(member),
        steps_per_epoch=ctx.plan.steps_per_epoch,
    )
    save_trained(ctx, member, model, keep_weights)


def run_member_job(job: MemberJob) -> int:
    """Train one member in whatever process runs this (a top-level function, so executors can ship it).

    Idempotent: a member whose logits exist is left as it is.
    """
    folder = EnsembleFolder(job.ensemble_dir)
    if job.threads is not None:  # a worker's own setting, whatever OMP_NUM_THREADS it inherited
        torch.set_num_threads(job.threads)
    if not folder.is_done(job.member, weights=job.keep_weights):
        ctx = MemberContext.load(RunFolder.open(job.run_dir), folder, torch.device(job.device))
        train_member(ctx, job.member, job.keep_weights)
    return job.member
