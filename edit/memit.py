"""MEMIT: write many facts at once into a range of FFN down-projections.

Meng, Sen Sharma, Andonian, Belinkov and Bau, "Mass-Editing Memory in a
Transformer", ICLR 2023. For edits i = 1..n with subjects s_i:

1. Target z_i: the residual stream at the last edit layer L (``resid.post``) at the
   subject's last token, plus a δ_i optimised so the model says target_new
   (`edit/targets.optimize_target` at ``Site(L, "resid.post")``, clamp 0.75).
2. For each edit layer l in ascending order, on the model with the updates of the
   earlier edit layers already in place:
   - K_l (F, n): the keys, ``mlp.post`` at the subject's last token averaged over the
     context templates (ROME's k*);
   - H_L (D, n): ``resid.post`` at layer L at the subject's last token of the rewrite
     prompt, and R = (Z − H_L) / (number of edit layers left, this one included);
   - ΔW_l = R K_lᵀ (λ C_l + K_l K_lᵀ)⁻¹, C_l = E[k kᵀ] of the layer's keys, λ the
     ``mom2_weight`` (by default proportional to the key width F, `mom2_weight_for`).
     This is the minimiser of λ·tr(ΔW C ΔWᵀ) + ||ΔW K − R||², so
     (λC + KKᵀ) is symmetric positive definite and solved by Cholesky in float64.

ΔW_l is stored as factors ``left`` = R (D, n) and ``right`` = (λC + KKᵀ)⁻¹K (F, n),
so every heavy solve is F × F whatever the number of edits. The partly edited model
exists only inside `edit/delta.apply` blocks that restore the weights bit for bit;
the model leaves `compute_memit` unchanged.

Beyond the paper: keys and states are read in right-padded batches that stop the
forward pass at the deepest layer needed (causal attention makes padding on the right
exact without a mask), and the solve never forms an inverse.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from memloc.core.devices import room_or_cpu
from memloc.core.errors import MemlocError
from memloc.core.hooks import trace
from memloc.core.lm.facts import Fact, require_edit_targets
from memloc.core.lm.model import LM, encode
from memloc.core.progress import Progress, offset
from memloc.core.sites import Site
from memloc.core.validation import at_least, fail, positive
from memloc.edit.delta import LayerDelta, WeightDelta, apply, require_editable, require_finite_part
from memloc.edit.null_space import Projector
from memloc.edit.stats import KeyStats
from memloc.edit.targets import TargetConfig, check_target_inputs, optimize_targets_batched


class MemitError(MemlocError):
    """A MEMIT request that cannot be computed as given."""


def _memit_target() -> TargetConfig:
    return TargetConfig(clamp=0.75)


@dataclass(frozen=True)
class MemitConfig:
    """Settings of a MEMIT edit (defaults of Meng et al. 2023 unless noted).

    ``layers`` are the edit layers (consecutive in the paper: GPT-J 3–8, GPT-2 XL
    13–17); the default 3–7 was chosen on SmolLM2-135M (30 layers). ``target`` is the
    z optimisation, with MEMIT's clamp of 0.75·||h||. ``mom2_weight`` is λ, the weight
    of the key second moment C that keeps the update small on ordinary keys; ``None``
    (the default) means ``mom2_per_width`` × F, F the key width (see `mom2_weight_for`;
    benchmarks/memit.py and the README compare the two on SmolLM2-135M).
    ``batch_size`` is the number of prompts per forward pass when reading keys and
    states, ``target_batch`` the number of facts whose z are optimised together; results
    do not depend on either beyond float rounding.
    """

    layers: tuple[int, ...] = (3, 4, 5, 6, 7)
    target: TargetConfig = field(default_factory=_memit_target)
    mom2_weight: float | None = None
    mom2_per_width: float = 15000.0 / 16384  # GPT-J's λ over its key width
    batch_size: int = 64
    target_batch: int = 16

    def __post_init__(self) -> None:
        if not self.layers:
            raise fail(self, "layers", "is empty; MEMIT needs at least one edit layer")
        positive(self, "mom2_weight", "mom2_per_width")
        at_least(self, 1, "batch_size", "target_batch")


# --- the solve --------------------------------------------------------------------------


def mom2_weight_for(config: MemitConfig, width: int) -> float:
    """λ for keys of ``width`` F: ``config.mom2_weight``, or ``mom2_per_width`` × F when None.

    Why λ scales with F and not with the keys' magnitude: for one key k the update writes
    the share a / (1 + a) of its residual, a = kᵀC⁻¹k / λ. Scaling the keys scales C and
    kkᵀ alike, so their magnitude cancels; but kᵀC⁻¹k of a key drawn like the statistics
    is F on average (E[kᵀC⁻¹k] = tr(C⁻¹C)). The paper's λ = 15,000 was set for GPT-J,
    F = 16,384 (a ≈ 1); on a model with F = 1,536 (SmolLM2-135M) the same λ makes a
    about ten times smaller for typical keys, so each layer writes only a fraction of its
    share of the residual and batch edits barely flip.
    """
    if config.mom2_weight is not None:
        return float(config.mom2_weight)
    return config.mom2_per_width * width


def solve_layer_update(
    keys: torch.Tensor,
    residuals: torch.Tensor,
    second_moment: torch.Tensor,
    mom2_weight: float,
    *,
    layer: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Factors (left (D, n), right (F, n)) of ΔW = R Kᵀ (λC + KKᵀ)⁻¹, and the solver's name.

    The name is always "cholesky", the only solver; it is recorded in the edit's
    diagnostics so that a report says how each layer was solved.

    ``keys`` K is (F, n), ``residuals`` R is (D, n), ``second_moment`` C is (F, F).
    Everything is float64 on the keys' device (the CPU when it lacks room). λC + KKᵀ is positive definite for any
    positive definite C and λ > 0, so it is solved by Cholesky; when the factorisation
    fails the system is (numerically) singular and `MemitError` says so rather than
    returning a huge update. Both name ``layer``.
    """
    keys = keys.double()
    # C, KKᵀ, the system and its factor: four (F, F) doubles, on the CPU if the GPU lacks room.
    dev = room_or_cpu(keys.device, 4 * keys.shape[0] ** 2 * 8)
    keys = keys.to(dev)
    where = f" of layer {layer}" if layer is not None else ""
    system = mom2_weight * second_moment.to(dev, torch.float64) + keys @ keys.T
    if not bool(torch.isfinite(system).all()):
        raise MemitError(
            f"the MEMIT system λC + KKᵀ{where} holds NaN or inf: its key statistics or keys come from "
            "non-finite activations; check the model's weights and recompute the statistics"
        )
    system = (system + system.T) / 2  # exact symmetry for Cholesky
    factor, status = torch.linalg.cholesky_ex(system)
    if int(status) != 0:
        raise MemitError(
            f"the MEMIT system λC + KKᵀ{where} is singular; give key statistics with a positive definite C "
            "(edit/stats.py shrinks an ill-conditioned one) or a larger mom2_weight"
        )
    return residuals.to(dev, torch.float64), torch.cholesky_solve(keys, factor), "cholesky"


# --- reading activations at the subject's last token ------------------------------------


def read_at_positions(
    lm: LM, prompts: Sequence[tuple[tuple[int, ...], int]], site: Site, batch_size: int
) -> torch.Tensor:
    """The activation at ``site`` at one position of each prompt, as (N, width) float64.

    ``prompts`` are (token ids, position) pairs. Prompts run longest first in
    right-padded batches of ``batch_size``; the forward pass stops at ``site``.
    """
    if batch_size < 1:
        raise MemitError(f"batch_size must be at least 1, got {batch_size}")
    dev = lm.device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i][0]))
    out = torch.empty(len(prompts), lm.adapter.width(site.kind), dtype=torch.float64, device=dev)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = len(prompts[chunk[0]][0])
        ids = torch.zeros(len(chunk), width, dtype=torch.long, device=dev)
        for row, i in enumerate(chunk):
            ids[row, : len(prompts[i][0])] = torch.tensor(prompts[i][0], device=dev)
        where = torch.tensor([prompts[i][1] for i in chunk], device=dev)
        with torch.no_grad(), trace(lm.model, lm.adapter, [site], stop=True) as seen:
            lm.model(input_ids=ids, use_cache=False)
        act = seen[site]
        got = act[torch.arange(len(where), device=act.device), where.to(act.device)]
        out[torch.tensor(chunk, device=dev)] = got.to(dev, torch.float64)
    return out


def _subject_prompts(
    lm: LM, facts: Sequence[Fact], templates: Sequence[str]
) -> list[tuple[tuple[int, ...], int]]:
    """(ids, subject's last token) for every fact in every context template, fact-major."""
    rows = []
    for fact in facts:
        for template in templates:
            text = template.replace("{}", fact.prompt, 1)
            enc = encode(lm.tokenizer, text, fact.subject)
            rows.append((enc.ids, enc.last_subject))
    return rows


def subject_keys(
    lm: LM, facts: Sequence[Fact], layer: int, templates: Sequence[str], batch_size: int
) -> torch.Tensor:
    """K (F, n): ``mlp.post`` at the subject's last token, averaged over the templates."""
    rows = read_at_positions(lm, _subject_prompts(lm, facts, templates), Site(layer, "mlp.post"), batch_size)
    return rows.view(len(facts), len(templates), -1).mean(dim=1).T


def subject_states(lm: LM, facts: Sequence[Fact], layer: int, batch_size: int) -> torch.Tensor:
    """H (D, n): ``resid.post`` of ``layer`` at the subject's last token of each rewrite prompt."""
    return read_at_positions(lm, _subject_prompts(lm, facts, ["{}"]), Site(layer, "resid.post"), batch_size).T


# --- targets z, optimised for many facts at once -----------------------------------------


def optimize_targets(
    lm: LM,
    facts: Sequence[Fact],
    site: Site,
    config: TargetConfig,
    templates: Sequence[str],
    facts_per_batch: int,
    progress: Progress | None = None,
) -> tuple[torch.Tensor, list[dict]]:
    """δ (facts, D) for every fact, ``facts_per_batch`` at a time (`edit/targets.optimize_targets_batched`).

    Each fact gets the δ it would get alone (up to float rounding). Returns δ and per
    fact the last losses and steps.
    """
    if facts_per_batch < 1:
        raise MemitError(f"target_batch must be at least 1, got {facts_per_batch}")
    results = optimize_targets_batched(
        lm, facts, site, config, templates, facts_per_batch=facts_per_batch, progress=progress
    )
    records = [{**r.losses[-1], "steps": r.steps} for r in results]
    return torch.stack([r.delta for r in results]), records


# --- the edit ---------------------------------------------------------------------------


def second_moment_of(stats: torch.Tensor | KeyStats) -> torch.Tensor:
    """C from a (F, F) tensor or from key statistics with ``.matrix()`` (edit/stats.py)."""
    return stats if isinstance(stats, torch.Tensor) else stats.matrix()


def check_layers(lm: LM, layers: Sequence[int]) -> tuple[int, ...]:
    """The edit layers, validated: in range, distinct, ascending."""
    if not layers:
        raise MemitError("MEMIT needs at least one edit layer")
    for layer in layers:
        lm.adapter.check_layer(layer)
    if list(layers) != sorted(set(layers)):
        raise MemitError(f"MEMIT edit layers must be distinct and ascending, got {list(layers)}")
    require_editable(lm.model, lm.adapter, layers, "the edit")
    return tuple(layers)


# One layer's solve inside the spread: (layer, keys K (F, n), residuals R (D, n)) ->
# (left, right, diagnostics) with ΔW_l = left @ rightᵀ.
LayerSolve = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, dict]]


@dataclass(frozen=True)
class Spread:
    """What spreading the residual over the edit layers produced."""

    parts: tuple[LayerDelta, ...]
    diagnostics: tuple[dict, ...]
    keys: Mapping[int, torch.Tensor]  # K_l (F, n) per layer, read with the earlier layers' updates in place


def spread_with(
    lm: LM,
    facts: Sequence[Fact],
    targets: torch.Tensor,
    layers: Sequence[int],
    solve: LayerSolve,
    templates: Sequence[str],
    batch_size: int,
    progress: Progress | None = None,
    *,
    method: str = "memit",
) -> Spread:
    """MEMIT's step 2 with any per-layer solve (MEMIT's, AlphaEdit's, a projected one).

    For each layer in ascending order, on the model with the earlier layers' updates in
    place: read K_l and H_L, R = (Z − H_L) / (layers left), and ``solve`` it. A layer
    update holding NaN or inf stops the spread there, naming ``method``, the layer and
    its place among the edit layers; the model is left as it was.
    """
    last = layers[-1]
    targets = targets.to(lm.device, torch.float64)
    parts: list[LayerDelta] = []
    diagnostics = []
    keys_by_layer = {}
    for step, layer in enumerate(layers):
        with apply(lm.model, lm.adapter, WeightDelta("memit", tuple(parts))):
            keys = subject_keys(lm, facts, layer, templates, batch_size)
            states = subject_states(lm, facts, last, batch_size)
        residuals = (targets - states) / (len(layers) - step)
        # The layer's solve runs where the layer, its statistics and its projector live.
        device = lm.layer_device(layer)
        keys, residuals = keys.to(device), residuals.to(device)
        left, right, extra = solve(layer, keys, residuals)
        when = f"edit layer {step + 1} of {len(layers)}"
        parts.append(require_finite_part(method, LayerDelta(layer, left, right), when))
        keys_by_layer[layer] = keys
        weight = lm.adapter.down_matrix(lm.model, layer).detach().double()
        diagnostics.append(
            {
                "layer": layer,
                **extra,
                "residual_norm": residuals.norm(dim=0).mean().item(),
                "update_norm": parts[-1].dense().norm().item(),
                "weight_norm": weight.norm().item(),
            }
        )
        if progress:
            progress(step + 1, len(layers), "layers")
    return Spread(tuple(parts), tuple(diagnostics), keys_by_layer)


def memit_solve(
    stats_by_layer: Mapping[int, torch.Tensor | KeyStats],
    config: MemitConfig,
    projectors: Mapping[int, Projector] | None = None,
) -> LayerSolve:
    """MEMIT's layer solve; with ``projectors`` each update becomes ΔW_l P_l (``--null-space``)."""

    def solve(
        layer: int, keys: torch.Tensor, residuals: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        weight_of_c = mom2_weight_for(config, keys.shape[0])
        left, right, how = solve_layer_update(
            keys, residuals, second_moment_of(stats_by_layer[layer]), weight_of_c, layer=layer
        )
        extra: dict = {"solver": how, "mom2_weight": weight_of_c}
        if projectors is not None:
            right = projectors[layer].project(right)
            extra["null_space"] = projectors[layer].record()
        return left, right, extra

    return solve


def spread_update(
    lm: LM,
    facts: Sequence[Fact],
    targets: torch.Tensor,
    stats_by_layer: Mapping[int, torch.Tensor | KeyStats],
    config: MemitConfig,
    templates: Sequence[str],
    progress: Progress | None = None,
    *,
    projectors: Mapping[int, Projector] | None = None,
) -> tuple[list[LayerDelta], list[dict]]:
    """Step 2 of MEMIT: spread the residual Z − H_L over the edit layers.

    ``targets`` Z is (D, n), the desired ``resid.post`` at the last edit layer. Returns
    the layer deltas and per-layer diagnostics. The model is unchanged afterwards.
    ``projectors`` (edit/null_space.py) project each layer's update onto the null space
    of its preserved keys before the next layer is solved.
    """
    layers = check_layers(lm, config.layers)
    for name, found in (("key statistics", stats_by_layer), ("null-space projectors", projectors)):
        missing = [layer for layer in layers if found is not None and layer not in found]
        if missing:
            raise MemitError(
                f"no {name} for edit layer(s) {missing}; compute them for these layers first (key_statistics)"
            )
    solve = memit_solve(stats_by_layer, config, projectors)
    spread = spread_with(lm, facts, targets, layers, solve, templates, config.batch_size, progress)
    return list(spread.parts), list(spread.diagnostics)


def memit_targets(
    lm: LM,
    facts: Sequence[Fact],
    config: MemitConfig,
    templates: Sequence[str],
    progress: Progress | None = None,
) -> tuple[torch.Tensor, list[dict]]:
    """Step 1 of MEMIT: Z (D, n), the desired ``resid.post`` at the last edit layer, and per-fact records.

    ``progress`` counts the facts whose targets are done.
    """
    if not facts:
        raise MemitError("MEMIT needs at least one fact")
    require_edit_targets(facts)
    last = check_layers(lm, config.layers)[-1]
    start = subject_states(lm, facts, last, config.batch_size)
    site = Site(last, "resid.post")
    check_target_inputs(lm, facts[0], site)
    deltas, records = optimize_targets(
        lm, facts, site, config.target, templates, config.target_batch, progress
    )
    return start + deltas.to(start.device, torch.float64).T, records


def compute_memit(
    lm: LM,
    facts: Sequence[Fact],
    stats_by_layer: Mapping[int, torch.Tensor | KeyStats],
    config: MemitConfig = MemitConfig(),
    templates: Sequence[str] = ("{}",),
    *,
    progress: Progress | None = None,
    projectors: Mapping[int, Projector] | None = None,
) -> WeightDelta:
    """The MEMIT update writing every fact's ``target_new`` (Meng et al. 2023).

    ``stats_by_layer`` maps each edit layer to its key second moment C (a (F, F)
    tensor or `edit.stats.KeyStats`); ``templates`` are the context templates
    (`edit/templates.context_templates`), each with one ``{}``. ``progress`` counts
    units done out of facts + layers: first each fact's target, then each layer.
    The model is unchanged afterwards.

        config = MemitConfig(layers=(3, 4, 5, 6, 7))
        delta = compute_memit(lm, facts, key_statistics_by_layer(lm, config.layers, StatsConfig()), config)

    ``info``: ``targets`` (per fact: the last z loss ``total``, ``nll``, ``kl``,
    ``decay`` and the Adam ``steps`` taken), ``target_seconds``,
    ``spread_seconds``, ``layers`` (per layer: solver, λ used, mean residual norm, update
    and weight Frobenius norms).
    """
    began = time.perf_counter()
    total = len(facts) + len(config.layers)
    targets, records = memit_targets(lm, facts, config, templates, offset(progress, 0, total))
    middle = time.perf_counter()

    layer_progress = offset(progress, len(facts), total)
    parts, diagnostics = spread_update(
        lm, facts, targets, stats_by_layer, config, templates, layer_progress, projectors=projectors
    )
    return WeightDelta(
        method="memit",
        layers=tuple(parts),
        case_ids=tuple(f.case_id for f in facts),
        config=asdict(config) if projectors is None else {**asdict(config), "null_space": True},
        info={
            "targets": records,
            "target_seconds": middle - began,
            "spread_seconds": time.perf_counter() - middle,
            "layers": diagnostics,
        },
    )
