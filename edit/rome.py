"""ROME: a rank-one update of one FFN down-projection that rewrites one fact.

Meng et al. 2022, "Locating and Editing Factual Associations in GPT" (NeurIPS), eq. 2:
the down-projection W of layer l is treated as a linear associative memory, key k (its
input, at the subject's last token) -> value (the MLP output). The update

    ΔW = Λ (C⁻¹k*)ᵀ,   Λ = (v* − b − W k*) / ((C⁻¹k*)ᵀ k*)

is the smallest change, in the metric of the key second moment C = E[k kᵀ], that makes
W' k* + b = v*. Here k* is the key averaged over the context templates
(edit/templates.py) and v* the MLP output found by the target optimisation
(edit/targets.py).

The reference implementation maps the bare prompt's key to v* but points the update
along C⁻¹ of the template-averaged key, which mixes two keys and causes "disabling
edits". r-ROME (Gupta et al. 2024, "Rebuilding ROME: Resolving Model Collapse during
Sequential Model Editing") uses the same k* in both places; memloc does so by default
(``consistent_keys``). ``consistent_keys=False`` reproduces the reference's mix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from memloc.core.devices import room_or_cpu
from memloc.core.errors import MemlocError
from memloc.core.lm.facts import Fact, require_edit_targets
from memloc.core.lm.model import LM
from memloc.core.progress import Progress
from memloc.core.sites import Site
from memloc.core.validation import at_least
from memloc.edit.delta import LayerDelta, WeightDelta, require_editable, require_finite_part
from memloc.edit.targets import TargetConfig, TargetResult, optimize_targets_batched
from memloc.edit.templates import TemplateConfig, context_templates


@dataclass(frozen=True)
class RomeConfig:
    """Which layer to edit, and how v* and the templates are found."""

    layer: int
    target: TargetConfig = field(default_factory=TargetConfig)
    templates: TemplateConfig = field(default_factory=TemplateConfig)
    consistent_keys: bool = True  # r-ROME: the same k* in the update's direction and its constraint
    # Facts whose v* are optimised together when several are edited independently
    # (`compute_rome_batch`); the deltas do not depend on it beyond float rounding. One fact
    # already fills a CPU thread, so batching is slower there (padding); raise it on a GPU.
    target_batch: int = 1

    def __post_init__(self) -> None:
        at_least(self, 0, "layer")
        at_least(self, 1, "target_batch")


def second_moment(stats: object, width: int, device: torch.device) -> torch.Tensor:
    """The (F, F) float64 key second moment from a tensor or an object with ``.matrix()``."""
    matrix = stats.matrix() if hasattr(stats, "matrix") else stats
    if not isinstance(matrix, torch.Tensor) or matrix.shape != (width, width):
        shape = tuple(matrix.shape) if isinstance(matrix, torch.Tensor) else type(matrix).__name__
        raise MemlocError(
            f"the key statistics must be a ({width}, {width}) matrix for this layer, got {shape}; "
            "compute them for the layer being edited"
        )
    return matrix.to(device=device, dtype=torch.float64)


def rank_one_update(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    c: torch.Tensor,
    k_star: torch.Tensor,
    v_star: torch.Tensor,
    k_constraint: torch.Tensor | None = None,
    *,
    layer: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(Λ, C⁻¹k*, denominator) in float64, so that (W + Λ (C⁻¹k*)ᵀ) k + b = v* for k = k_constraint.

    ``k_constraint`` defaults to k* (r-ROME). C⁻¹k* comes from a float64 solve. A C
    holding NaN or inf, or a singular one, is a one-line `MemlocError` naming ``layer``.
    """
    k_star = k_star.double()
    k_eq = k_star if k_constraint is None else k_constraint.double()
    w = weight.double()
    where = f"layer {layer}" if layer is not None else "the edited layer"
    # A NaN C solves without complaint into a NaN update, so it is caught first.
    if not bool(torch.isfinite(c).all()):
        raise MemlocError(
            f"the key statistics C of {where} hold NaN or inf: they were taken from a model whose "
            "activations are not finite; check the model's weights and recompute the statistics"
        )
    try:
        direction = torch.linalg.solve(c, k_star)
    except torch.linalg.LinAlgError:
        raise MemlocError(
            f"the key statistics C of {where} are singular, so ROME cannot solve C⁻¹k*: "
            "take them over more texts (samples), or use the default shrinkage (max_condition)",
            field="samples",
        ) from None
    denominator = torch.dot(direction, k_eq)
    residual = v_star.double() - w @ k_eq
    if bias is not None:
        residual = residual - bias.double()
    return residual / denominator, direction, denominator.item()


def compute_rome(
    lm: LM,
    fact: Fact,
    second_moment_or_stats: object,
    config: RomeConfig,
    templates: Sequence[str] | None = None,
    *,
    progress: Progress | None = None,
) -> WeightDelta:
    """The rank-one `WeightDelta` that rewrites ``fact`` to its target_new; the model is left unchanged.

    ``second_moment_or_stats`` is C for ``config.layer``: an (F, F) tensor or key statistics
    with ``.matrix()`` (edit/stats.py). ``templates`` default to the model's cached context
    templates for ``config.templates``. ``progress(steps, total, description)`` follows the optimisation.
    The one-fact case of `compute_rome_batch`.

        stats = key_statistics_by_layer(lm, [6], StatsConfig())
        delta = compute_rome(lm, fact, stats[6], RomeConfig(layer=6))
        with apply(lm.model, lm.adapter, delta):
            ...  # the edited model; the weights are restored on exit
    """
    (delta,) = compute_rome_batch(lm, [fact], second_moment_or_stats, config, templates, progress=progress)
    return delta


def compute_rome_batch(
    lm: LM,
    facts: Sequence[Fact],
    second_moment_or_stats: object,
    config: RomeConfig,
    templates: Sequence[str] | None = None,
    *,
    facts_per_batch: int | None = None,
    progress: Progress | None = None,
) -> list[WeightDelta]:
    """One independent ROME `WeightDelta` per fact, each as `compute_rome` gives it alone.

    Every fact's v* is optimised on the unedited model, so the optimisations are rows of
    one batch (`edit/targets.optimize_targets_batched`, ``facts_per_batch`` facts at a
    time, default ``config.target_batch``); then each fact's rank-one update is solved
    alone. The deltas equal one-at-a-time ones up to float rounding; they are meant to be
    applied one at a time (``single`` mode) or summed (`edit.editors.combine`).
    ``progress`` counts facts whose targets are done (one fact: the steps).

        deltas = compute_rome_batch(lm, facts, stats[6], RomeConfig(layer=6))
        for delta in deltas:
            with apply(lm.model, lm.adapter, delta):
                ...  # this fact's edit alone
    """
    require_edit_targets(facts)
    model, adapter = lm.model, lm.adapter
    layer = adapter.check_layer(config.layer)
    require_editable(model, adapter, [layer], "ROME")
    weight = adapter.down_matrix(model, layer).detach()
    bias = adapter.down_bias(model, layer)
    # C and its LU factor are two (F, F) doubles: solved on the CPU when the layer's GPU lacks room.
    where = room_or_cpu(weight.device, 2 * adapter.d_mlp**2 * 8)
    c = second_moment(second_moment_or_stats, adapter.d_mlp, where)
    if templates is None:
        templates = context_templates(lm, config.templates)
    key_site = Site(layer, "mlp.post")
    results = optimize_targets_batched(
        lm,
        facts,
        Site(layer, "mlp.out"),
        config.target,
        list(templates),
        facts_per_batch=config.target_batch if facts_per_batch is None else facts_per_batch,
        trace_sites=[key_site],
        progress=progress,
    )
    weight, bias = weight.to(where), None if bias is None else bias.detach().to(where)
    return [
        _rank_one_delta(fact, result, weight, bias, c, config, templates)
        for fact, result in zip(facts, results, strict=True)
    ]


def _rank_one_delta(
    fact: Fact,
    result: TargetResult,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    c: torch.Tensor,
    config: RomeConfig,
    templates: Sequence[str],
) -> WeightDelta:
    """ROME's update for one fact from its optimised target and clean keys, with its diagnostics."""
    layer = config.layer
    keys = result.clean[Site(layer, "mlp.post")].to(c.device, torch.float64)  # (N, F), one per template
    k_star = keys.mean(0)
    # The reference ROME constrains the bare prompt's key (template "{}") instead of k*.
    k_constraint = (
        None if config.consistent_keys else keys[list(templates).index("{}") if "{}" in templates else 0]
    )
    lam, direction, denominator = rank_one_update(
        weight, bias, c, k_star, result.target.to(c.device), k_constraint, layer=layer
    )
    update_norm = lam.norm().item() * direction.norm().item()
    weight_norm = weight.double().norm().item()
    info = {
        "layer": layer,
        "consistent_keys": config.consistent_keys,
        "templates": len(templates),
        "losses": [dict(step) for step in result.losses],
        "steps": result.steps,
        "p_new_before": result.p_new_before,
        "p_new_after": result.p_new_after,
        "v0_norm": result.v0.norm().item(),
        "delta_norm": result.delta.norm().item(),
        "k_star_norm": k_star.norm().item(),
        "denominator": denominator,
        "lambda_norm": lam.norm().item(),
        "update_norm": update_norm,
        "weight_norm": weight_norm,
        "update_ratio": update_norm / weight_norm,
    }
    part = require_finite_part("rome", LayerDelta(layer, left=lam[:, None], right=direction[:, None]))
    return WeightDelta(
        method="rome",
        layers=(part,),
        case_ids=(fact.case_id,),
        config=asdict(config),
        info=info,
    )
