"""K small ensemble members trained at once, as one batched model (torch.func).

The members' weights are stacked (`torch.func.stack_module_state`) and one `vmap` of
`functional_call` runs all K on their own batches in one pass. Each member keeps what
makes it itself in `core/ensemble/members.py`'s sequential path: the same seeded
initialization, the same per-epoch shuffle of its own subset into the same
``steps_per_epoch`` chunks (`epoch_batches`), the same warm-up-cosine rate. Chunks of
different lengths are padded to the longest with weight-0 slots, the loss is the sum
over members of each member's mean over its real slots, and Adam on the stacked
tensors is K independent Adams (Adam is elementwise). So the final logits equal K
separate `fit` runs up to float rounding (batched matrix products sum in another order).

BatchNorm normalizes by statistics of the whole batch, so a padded slot would change
every real one. Models with normalization layers therefore run each step in groups of
the members whose chunks have the same length (a step has only a few lengths), one
vmapped forward per group on its real examples alone; the group's slices of the
stacked parameters carry the gradients back, and its updated running statistics are
written back into the stacked buffers. Dropout's random masks would differ from
separate runs, so such models are refused: train them with the sequential or Ray executor.

Example::

    train_batched(ctx, members=list(range(16)), models_per_pass=8)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from memloc.core.ensemble.members import MemberContext, build_member, placed, save_trained
from memloc.core.errors import MemlocError
from memloc.core.progress import Progress
from memloc.core.training.schedule import check_finite_loss, warmup_cosine
from memloc.core.training.subset_fit import epoch_batches
from memloc.core.validation import at_least
from torch import nn

REFUSED = "use --executor sequential or ray"


@dataclass(frozen=True)
class BatchedExecutor:
    """Members trained ``models_per_pass`` at a time (None: all at once) in this process."""

    models_per_pass: int | None = None
    name: ClassVar[str] = "batched"

    def __post_init__(self) -> None:
        at_least(self, 1, "models_per_pass")


def check_batchable(model: nn.Module) -> None:
    """Refuse, in one line, a model whose training does not vmap into K independent ones."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            raise MemlocError(
                f"--executor batched cannot train a model with dropout ({name}: its random masks would "
                f"differ from separate runs); {REFUSED}"
            )


def normalizes(model: nn.Module) -> bool:
    """Whether padded slots would reach the real ones: batch statistics, or running ones."""
    return any(isinstance(m, nn.modules.batchnorm._NormBase) for m in model.modules())


def train_batched(
    ctx: MemberContext,
    members: Sequence[int],
    *,
    models_per_pass: int | None = None,
    keep_weights: bool = False,
    progress: Progress | None = None,
) -> None:
    """Train and save ``members``, ``models_per_pass`` at a time."""
    members = list(members)
    width = models_per_pass or max(1, len(members))
    for start in range(0, len(members), width):
        chunk = members[start : start + width]
        models = [placed(build_member(ctx.run, k, ctx.plan.membership.seed), ctx) for k in chunk]
        for model in models:
            check_batchable(model)

        def report(epoch: int, first: int = start, size: int = len(chunk)) -> None:
            if progress:
                label = f"models {first + 1}-{first + size}: epoch {epoch}/{ctx.plan.fit.epochs}"
                progress(first, len(members), label)

        _train_pass(ctx, chunk, models, report)
        for k, model in zip(chunk, models, strict=True):
            save_trained(ctx, k, model, keep_weights)
        if progress:
            progress(start + len(chunk), len(members), "")


def _train_pass(ctx: MemberContext, chunk: Sequence[int], models: list[nn.Module], report) -> None:
    """One batched training of ``models`` (members ``chunk``); their weights end in the modules."""
    from torch.func import functional_call, stack_module_state, vmap

    plan, device = ctx.plan, ctx.x_train.device
    steps, fits = plan.steps_per_epoch, [plan.member_fit(k) for k in chunk]
    subsets = [torch.as_tensor(ctx.membership.subset(k), device=device, dtype=torch.long) for k in chunk]
    for k, subset in zip(chunk, subsets, strict=True):
        if len(subset) < steps:  # an empty batch skips a step in fit; a batched Adam cannot skip it
            raise MemlocError(
                f"member {k} trains on {len(subset)} examples, fewer than the {steps} steps per epoch; {REFUSED}"
            )
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta").train()

    def one(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (x,))

    forward = vmap(one)
    step_loss = _grouped_loss if normalizes(base) else _padded_loss
    first = [epoch_batches(s, f.seed, 1, steps)[0] for s, f in zip(subsets, fits, strict=True)]
    layout = StoredInGradientOrder.probe(
        params, lambda p: step_loss(forward, p, _copies(buffers), first, ctx)
    )
    optimizer = _adam(list(layout.stored.values()), plan.fit.lr, plan.fit.weight_decay)
    total = steps * plan.fit.epochs
    for epoch in range(1, plan.fit.epochs + 1):
        batches = [epoch_batches(s, f.seed, epoch, steps) for s, f in zip(subsets, fits, strict=True)]
        for i in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine(plan.fit.lr, (epoch - 1) * steps + i, total)
            loss = step_loss(forward, layout.views(), buffers, [b[i] for b in batches], ctx)
            check_finite_loss(loss, epoch, i)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # the gradients take their weights' layout, as the fused Adam needs
            optimizer.step()
        report(epoch)
    params = layout.views()
    with torch.no_grad():
        for j, model in enumerate(models):
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                tensor.copy_((params if name in params else buffers)[name][j])
            model.eval()


Forward = Callable[[dict, dict, torch.Tensor], torch.Tensor]


def _padded_loss(
    forward: Forward, params: dict, buffers: dict, rows: list[torch.Tensor], ctx: MemberContext
) -> torch.Tensor:
    """Sum over members of each one's mean cross-entropy, all K in one forward on padded chunks."""
    index, weight = _padded(rows, ctx.x_train.device)
    logits = forward(params, buffers, ctx.x_train[index]).float()
    ce = F.cross_entropy(logits.flatten(0, 1), ctx.given[index].flatten(), reduction="none")
    return ((ce.view_as(weight) * weight).sum(1) / weight.sum(1)).sum()


def _grouped_loss(
    forward: Forward, params: dict, buffers: dict, rows: list[torch.Tensor], ctx: MemberContext
) -> torch.Tensor:
    """The same sum, one forward per group of equally long chunks, so no padding enters a batch statistic.

    Indexing the stacked parameters keeps the autograd path back to them; the buffers' slices
    are copies, so the running statistics each group updated are written back afterwards.
    """
    lengths = [len(r) for r in rows]
    loss = torch.zeros((), device=ctx.x_train.device)
    for length in sorted(set(lengths)):
        members = [j for j, n in enumerate(lengths) if n == length]
        idx = torch.tensor(members, device=ctx.x_train.device)
        index = torch.stack([rows[j] for j in members])
        group_buffers = {name: b[idx] for name, b in buffers.items()}
        logits = forward(
            {name: p[idx] for name, p in params.items()}, group_buffers, ctx.x_train[index]
        ).float()
        ce = F.cross_entropy(logits.flatten(0, 1), ctx.given[index].flatten(), reduction="none")
        loss = loss + ce.view(len(members), length).mean(1).sum()
        with torch.no_grad():
            for name, b in buffers.items():
                b[idx] = group_buffers[name]
    return loss


def _copies(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.clone() for name, t in tensors.items()}


@dataclass(frozen=True)
class StoredInGradientOrder:
    """Stacked parameters kept contiguous in the memory order their gradients arrive in.

    vmap's batched matrix products return a (K, out, in) weight's gradient in (K, in, out)
    order. Kept as (K, out, in), autograd would copy every gradient into that order at
    every step (a strided copy costing as much as the backward's matrix products), and a
    permuted, non-contiguous weight would slow the fused Adam instead. So each weight is
    stored as the contiguous tensor of the gradient's order, its logical (K, out, in)
    shape a permuted view of it: the gradient is taken over as it is and Adam runs on
    contiguous memory. One probe gradient (on copies of the buffers, no step taken)
    reads each gradient's order. Values are unchanged.
    """

    stored: dict[str, torch.Tensor]
    back: dict[str, list[int]]

    @classmethod
    def probe(
        cls, params: dict[str, torch.Tensor], loss: Callable[[dict], torch.Tensor]
    ) -> StoredInGradientOrder:
        grads = torch.autograd.grad(loss(params), list(params.values()), allow_unused=True)
        stored, back = {}, {}
        for (name, p), g in zip(params.items(), grads, strict=True):
            order = _memory_order(g) if g is not None else list(range(p.dim()))
            stored[name] = p.detach().permute(order).contiguous().requires_grad_(p.requires_grad)
            back[name] = _inverse(order)
        return cls(stored, back)

    def views(self) -> dict[str, torch.Tensor]:
        """The parameters in their logical shapes (views: gradients flow to ``stored``)."""
        return {name: t.permute(self.back[name]) for name, t in self.stored.items()}


def _memory_order(t: torch.Tensor) -> list[int]:
    """Dimensions from the outermost in memory to the innermost (ties keep their order)."""
    strides = t.stride()
    return sorted(range(t.dim()), key=lambda d: -strides[d])


def _inverse(order: list[int]) -> list[int]:
    inverse = [0] * len(order)
    for position, d in enumerate(order):
        inverse[d] = position
    return inverse


def _adam(params: list[torch.Tensor], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam over the stacked tensors, fused into one kernel per tensor where torch has one.

    The stacked tensors are K times larger than one model's, so Adam's many elementwise
    passes are most of a step; the fused kernel does the same arithmetic in one pass.
    """
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _padded(batches: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, L) example indices, each row padded with example 0, and (K, L) weights: 1 real, 0 padding."""
    index = nn.utils.rnn.pad_sequence(batches, batch_first=True, padding_value=0)
    lengths = torch.tensor([len(b) for b in batches], device=device)
    weight = (torch.arange(index.shape[1], device=device)[None, :] < lengths[:, None]).float()
    return index, weight
