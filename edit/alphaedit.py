"""AlphaEdit: MEMIT with each layer's update confined to the null space of the preserved keys.

Fang et al., "AlphaEdit: Null-Space Constrained Knowledge Editing for Language
Models", ICLR 2025. MEMIT (edit/memit.py) trades the new facts against the preserved
keys K₀ through λC₀; AlphaEdit instead projects the update onto the null space of C₀
(P, edit/null_space.py), so the preserved keys' outputs stay as they were, and keeps
the keys K_p of the edits made earlier in a sequential run from being overwritten.
For a batch with keys K₁ (F, n) and residuals R (D, n) at a layer (MEMIT's targets and
residuals, unchanged):

    Δ = R K₁ᵀ P (K_p K_pᵀ P + K₁ K₁ᵀ P + αI)⁻¹,   W ← W + Δ P,   so (Δ P) K₀ ≈ 0.

α is ``identity_weight`` (1 in the paper's equation; the reference code calls it L2).
With A = K_pK_pᵀ + K₁K₁ᵀ, P(AP + αI)⁻¹ = P(PAP + αI)⁻¹P (PAP + αI commutes with P),
so Δ P = R [P (PAP + αI)⁻¹ P K₁]ᵀ: one symmetric positive definite system, solved by
Cholesky in float64. With P = ÛÛᵀ (Û the kept eigenvectors, `Projector.basis`) it is
k × k, Û (ÛᵀAÛ + αI)⁻¹ ÛᵀK₁, k the kept directions: O(F²k) where forming PAP is O(F³). The delta is stored as ``left`` = R (D, n) and
``right`` = P (PAP + αI)⁻¹ P K₁ (F, n), so left @ rightᵀ is Δ P itself.

The earlier edits' keys are explicit: `compute_alphaedit` takes them as ``previous_keys``
(`EditedKeys`, K_pK_pᵀ per layer) and returns them with this batch's added. Nothing is
kept between calls, so independent runs cannot leak keys into each other (the defect
of EasyEdit issue #613, where they lived in module state).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from memloc.core.devices import room_or_cpu
from memloc.core.lm.facts import Fact
from memloc.core.lm.model import LM
from memloc.core.progress import Progress, offset
from memloc.core.validation import at_least, fail, positive
from memloc.edit.delta import WeightDelta
from memloc.edit.memit import LayerSolve, MemitConfig, MemitError, check_layers, memit_targets, spread_with
from memloc.edit.null_space import NullSpaceConfig, Projector
from memloc.edit.targets import TargetConfig


class AlphaEditError(MemitError):
    """An AlphaEdit request that cannot be computed as given."""


def _alphaedit_target() -> TargetConfig:
    return TargetConfig(clamp=0.75)  # MEMIT's z optimisation, as the paper keeps it


@dataclass(frozen=True)
class AlphaEditConfig:
    """Settings of an AlphaEdit edit: MEMIT's layers, targets and batching, plus the null space.

    ``identity_weight`` is α in (K_pK_pᵀP + K₁K₁ᵀP + αI): larger keeps the update smaller.
    ``null_space`` says which eigen-directions of C₀ an update may use (edit/null_space.py).
    """

    layers: tuple[int, ...] = (3, 4, 5, 6, 7)
    target: TargetConfig = field(default_factory=_alphaedit_target)
    identity_weight: float = 1.0
    null_space: NullSpaceConfig = field(default_factory=NullSpaceConfig)
    batch_size: int = 64
    target_batch: int = 16

    def __post_init__(self) -> None:
        if not self.layers:
            raise fail(self, "layers", "is empty; AlphaEdit needs at least one edit layer")
        positive(self, "identity_weight")
        at_least(self, 1, "batch_size", "target_batch")

    def memit(self) -> MemitConfig:
        """The MEMIT settings whose targets and residuals AlphaEdit shares."""
        return MemitConfig(
            layers=self.layers, target=self.target, batch_size=self.batch_size, target_batch=self.target_batch
        )


@dataclass(frozen=True)
class EditedKeys:
    """K_pK_pᵀ (F, F) float64 per layer: the keys of the edits already made in a run.

    Immutable: `EditedKeys.plus` returns a new value, so a run's keys are only what it
    passes along.
    """

    grams: Mapping[int, torch.Tensor] = field(default_factory=dict)
    edits: int = 0  # facts whose keys are in

    def gram(self, layer: int, width: int, device: torch.device) -> torch.Tensor:
        found = self.grams.get(layer)
        if found is None:
            return torch.zeros(width, width, dtype=torch.float64, device=device)
        if found.shape != (width, width):
            raise AlphaEditError(
                f"the earlier edits' keys of layer {layer} are {tuple(found.shape)}, not ({width}, {width}); "
                "they come from another model"
            )
        return found.to(device, torch.float64)

    def plus(self, keys_by_layer: Mapping[int, torch.Tensor], edits: int) -> EditedKeys:
        """These keys with K Kᵀ of ``keys_by_layer`` (F, n each) added."""
        grams = dict(self.grams)
        for layer, keys in keys_by_layer.items():
            k = keys.double()
            grams[layer] = (grams[layer].to(k.device) if layer in grams else 0) + k @ k.T
        return EditedKeys(grams, self.edits + edits)

    def record(self) -> dict:
        return {"edits": self.edits, "layers": sorted(self.grams)}


def alphaedit_layer_update(
    keys: torch.Tensor,
    residuals: torch.Tensor,
    projector: torch.Tensor,
    previous: torch.Tensor | None = None,
    identity_weight: float = 1.0,
    *,
    layer: int | None = None,
    basis: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (left (D, n), right (F, n)) with left @ rightᵀ = Δ P (module docstring).

    ``keys`` K₁ (F, n), ``residuals`` R (D, n), ``projector`` P (F, F), ``previous``
    K_pK_pᵀ (F, F) or None. Everything is float64 on the keys' device (the CPU when it lacks
    room). With ``basis`` Û (F, k), P = ÛÛᵀ (`Projector.basis`), the same update is solved in
    the kept coordinates: P (PAP + αI)⁻¹ P = Û (ÛᵀAÛ + αI)⁻¹ Ûᵀ, a k × k system formed in
    O(F²k) instead of two F × F × F products (benchmarks/alphaedit.py).

        left, right = alphaedit_layer_update(k1, r, projector.matrix, kp @ kp.T, basis=projector.basis)
    """
    # P, K_pK_pᵀ, PAP, αI, the system and its factor: at most six (F, F) doubles, else on the CPU.
    dev = room_or_cpu(keys.device, 6 * keys.shape[0] ** 2 * 8)
    k = keys.to(dev, torch.float64)
    if basis is not None:
        u = basis.to(dev, torch.float64)
        coords = u.T @ k  # (k, n)
        system = coords @ coords.T
        if previous is not None:
            system += u.T @ (previous.to(dev, torch.float64) @ u)
    else:
        p = projector.to(dev, torch.float64)
        gram = k @ k.T if previous is None else previous.to(dev, torch.float64) + k @ k.T
        system = p @ gram @ p
    system.diagonal().add_(identity_weight)
    system = (system + system.T) / 2  # exact symmetry for Cholesky
    factor, status = torch.linalg.cholesky_ex(system)
    if int(status) != 0 or not bool(torch.isfinite(system).all()):
        where = f" of layer {layer}" if layer is not None else ""
        raise AlphaEditError(
            f"the AlphaEdit system PAP + αI{where} is not positive definite: its keys are not finite "
            "or identity_weight is too small against them"
        )
    if basis is not None:
        right = u @ torch.cholesky_solve(coords, factor)
    else:
        right = p @ torch.cholesky_solve(p @ k, factor)
    return residuals.to(dev, torch.float64), right


def alphaedit_solve(
    projectors: Mapping[int, Projector], previous: EditedKeys, config: AlphaEditConfig
) -> LayerSolve:
    """AlphaEdit's per-layer solve for `edit.memit.spread_with`."""

    def solve(
        layer: int, keys: torch.Tensor, residuals: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        projector = projectors[layer]
        if projector.width != keys.shape[0]:
            raise AlphaEditError(
                f"the null-space projector of layer {layer} is {projector.width} wide, the keys "
                f"{keys.shape[0]}; build it from this layer's statistics"
            )
        gram = previous.gram(layer, keys.shape[0], keys.device)
        left, right = alphaedit_layer_update(
            keys,
            residuals,
            projector.matrix,
            gram,
            config.identity_weight,
            layer=layer,
            basis=projector.basis,
        )
        extra = {
            "solver": "cholesky" if projector.basis is None else "cholesky, kept coordinates",
            "identity_weight": config.identity_weight,
            "previous_edits": previous.edits,
            "null_space": projector.record(),
        }
        return left, right, extra

    return solve


def compute_alphaedit(
    lm: LM,
    facts: Sequence[Fact],
    projectors: Mapping[int, Projector],
    config: AlphaEditConfig = AlphaEditConfig(),
    templates: Sequence[str] = ("{}",),
    *,
    previous_keys: EditedKeys | None = None,
    progress: Progress | None = None,
) -> tuple[WeightDelta, EditedKeys]:
    """The AlphaEdit update writing every fact's ``target_new``, and the run's keys after it.

    ``projectors`` maps each edit layer to its null-space projector
    (`edit.null_space.projectors_by_layer` of the key statistics); ``previous_keys`` are
    the keys returned by the previous batch of a sequential run (None: the first batch,
    or an independent run). The model is unchanged afterwards.

        projectors = projectors_by_layer(key_statistics_by_layer(lm, layers, StatsConfig()), NullSpaceConfig())
        delta, keys = compute_alphaedit(lm, batch1, projectors, AlphaEditConfig(layers=layers))
        handle = apply(lm.model, lm.adapter, delta)
        delta2, keys = compute_alphaedit(lm, batch2, projectors, config, previous_keys=keys)
    """
    layers = check_layers(lm, config.layers)
    missing = [layer for layer in layers if layer not in projectors]
    if missing:
        raise AlphaEditError(
            f"no null-space projector for edit layer(s) {missing}; build them from their statistics"
        )
    previous = previous_keys if previous_keys is not None else EditedKeys()
    began = time.perf_counter()
    total = len(facts) + len(layers)
    targets, records = memit_targets(lm, facts, config.memit(), templates, offset(progress, 0, total))
    middle = time.perf_counter()
    solve = alphaedit_solve(projectors, previous, config)
    spread = spread_with(
        lm,
        facts,
        targets,
        layers,
        solve,
        templates,
        config.batch_size,
        offset(progress, len(facts), total),
        method="alphaedit",
    )
    delta = WeightDelta(
        method="alphaedit",
        layers=spread.parts,
        case_ids=tuple(f.case_id for f in facts),
        config=asdict(config),
        info={
            "targets": records,
            "target_seconds": middle - began,
            "spread_seconds": time.perf_counter() - middle,
            "layers": list(spread.diagnostics),
            "previous_keys": previous.record(),
        },
    )
    return delta, previous.plus(spread.keys, len(facts))
