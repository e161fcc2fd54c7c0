"""The projector onto the null space of the preserved keys, for AlphaEdit and ``--null-space``.

Fang et al., "AlphaEdit: Null-Space Constrained Knowledge Editing for Language
Models", ICLR 2025. K₀ are the keys a layer should keep answering as before; their
second moment C₀ = K₀K₀ᵀ/n is the layer's key statistics (edit/stats.py). With the
eigendecomposition C₀ = U Λ Uᵀ (float64, ``torch.linalg.eigh``) and Û the eigenvectors
whose eigenvalue is below a cutoff,

    P = Û Ûᵀ,   so that for any update ΔW (D, F):  (ΔW P) K₀ ≈ 0.

The cutoff is ``threshold`` × λ_max of C₀ (``scale="relative"``, the default) or
``threshold`` itself (``scale="absolute"``). The paper's 1e-2 is absolute on C₀ of
models whose keys are O(1); a relative cutoff does not depend on the keys' magnitude,
so one default serves models of any width and activation scale. ‖P K₀‖² /n is at most
the largest kept eigenvalue (``Projector.leak``), which says how closely K₀ is kept.

The projector is built from the *unshrunk* second moment: shrinking C toward μI
(`KeyStats.matrix`) would lift the small eigenvalues that define the null space.
Projectors of cached statistics are cached beside them (`projector_file`).

    stats = key_statistics_by_layer(lm, [6], StatsConfig())
    projector = null_space_projector(stats[6], NullSpaceConfig(threshold=1e-2))
    projector.kept_fraction  # share of the F key directions an edit may still use
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from memloc.core.checkpoints import load_tensors, save_tensors
from memloc.core.devices import EIGH_COPIES, room_or_cpu
from memloc.core.errors import MemlocError
from memloc.core.lm.loading import cache_root
from memloc.core.validation import one_of, positive
from memloc.edit.delta import LayerDelta, WeightDelta
from memloc.edit.stats import KeyStats
from safetensors import SafetensorError, safe_open

SCALES = ("relative", "absolute")
PROJECTOR_DTYPES = {"float32": torch.float32, "float64": torch.float64}
PROJECTOR_FORMAT = 2  # 2: the basis Û is stored beside P


class NullSpaceError(MemlocError):
    """A null-space projector that cannot be built or used as asked."""


@dataclass(frozen=True)
class NullSpaceConfig:
    """Which eigen-directions of C₀ count as unused by the preserved keys.

    A direction is kept (an edit may write along it) when its eigenvalue is below
    ``threshold`` × λ_max (``scale="relative"``) or below ``threshold`` (``"absolute"``).
    ``dtype`` is the stored matrix's; projections are always computed in float64.
    """

    threshold: float = 1e-2
    scale: str = "relative"
    dtype: str = "float64"

    def __post_init__(self) -> None:
        positive(self, "threshold")
        one_of(self, "scale", SCALES)
        one_of(self, "dtype", PROJECTOR_DTYPES)


@dataclass(frozen=True)
class Projector:
    """P = Û Ûᵀ (F, F) onto the null space of one layer's preserved keys, and how it was cut."""

    matrix: torch.Tensor  # (F, F), symmetric and idempotent, in the config's dtype
    kept: int  # directions in the null space (the rank of P)
    cutoff: float  # the absolute eigenvalue bound used
    min_eigenvalue: float
    max_eigenvalue: float
    leak: float  # the largest kept eigenvalue: ‖P K₀‖²/n ≤ leak
    config: NullSpaceConfig
    layer: int | None = None
    key: str = ""  # the statistics' cache key, when they were cached
    # Û (F, kept), orthonormal columns with Û Ûᵀ = P, in the config's dtype. AlphaEdit's
    # solve works in these kept coordinates: k × k instead of F × F (edit/alphaedit.py).
    basis: torch.Tensor | None = None

    @property
    def width(self) -> int:
        return self.matrix.shape[0]

    @property
    def kept_fraction(self) -> float:
        return self.kept / self.width

    def project(self, right: torch.Tensor) -> torch.Tensor:
        """P @ right in float64: the right factor of ΔW P for ΔW = left @ rightᵀ (P is symmetric)."""
        # P is (F, F): projected on the CPU when right's GPU has no room for a float64 copy.
        where = room_or_cpu(right.device, self.matrix.numel() * 8)
        return (self.matrix.to(where, torch.float64) @ right.to(where, torch.float64)).to(right.device)

    def record(self) -> dict:
        """Plain numbers for a delta's diagnostics and the ledger."""
        return {
            "kept": self.kept,
            "kept_fraction": self.kept_fraction,
            "cutoff": self.cutoff,
            "leak": self.leak,
            "min_eigenvalue": self.min_eigenvalue,
            "max_eigenvalue": self.max_eigenvalue,
            "threshold": self.config.threshold,
            "scale": self.config.scale,
        }


def _moment(stats: KeyStats | torch.Tensor) -> torch.Tensor:
    matrix = stats.second_moment if isinstance(stats, KeyStats) else stats
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise NullSpaceError(
            f"the preserved keys' second moment must be square (F, F), got {tuple(matrix.shape)}"
        )
    if not bool(torch.isfinite(matrix).all()):
        raise NullSpaceError(
            "the preserved keys' second moment holds NaN or inf; recompute the key statistics "
            "from a model with finite activations"
        )
    return matrix.double()


def compute_projector(stats: KeyStats | torch.Tensor, config: NullSpaceConfig) -> Projector:
    """P from C₀ by eigh in float64; no cache. ``stats`` is `KeyStats` or C₀ (F, F)."""
    moment = _moment(stats)
    # Where C₀ is (the CPU for cached statistics) unless the GPU lacks room for eigh's workspace;
    # eigh reads only the lower triangle, so C₀ is taken as symmetric without an F × F copy.
    moment = moment.to(room_or_cpu(moment.device, EIGH_COPIES * moment.numel() * 8))
    values, vectors = torch.linalg.eigh(moment)
    top = values[-1].item()
    cutoff = config.threshold * top if config.scale == "relative" else config.threshold
    chosen = values < cutoff
    kept = int(chosen.sum())
    if kept == 0:
        raise NullSpaceError(
            f"the preserved keys leave no null space: every eigenvalue of C₀ is at least {cutoff:.3g}; "
            "raise the null-space threshold"
        )
    basis = vectors[:, chosen].contiguous()  # eigh gives column-major; the cache stores row-major
    del vectors  # before P is formed: one F × F matrix fewer at the peak
    matrix = basis @ basis.T
    layer = stats.layer if isinstance(stats, KeyStats) else None
    return Projector(
        matrix=matrix.to(PROJECTOR_DTYPES[config.dtype]),
        kept=kept,
        cutoff=cutoff,
        min_eigenvalue=values[0].item(),
        max_eigenvalue=top,
        leak=max(values[chosen][-1].item(), 0.0),
        config=config,
        layer=layer,
        key=stats.key if isinstance(stats, KeyStats) else "",
        basis=basis.to(PROJECTOR_DTYPES[config.dtype]),
    )


# --- cache ---------------------------------------------------------------------------


def projector_file(stats: KeyStats, config: NullSpaceConfig, cache_dir: str | Path | None = None) -> Path:
    """``<stats folder>/null-layer_<l>-<scale>-<threshold>-<dtype>.safetensors``.

    The statistics' folder is ``<cache>/<weights hash>/<corpus>-n…`` (edit/stats.py
    `cache_folder`), named by the statistics' ``key``; ``cache_dir`` defaults to
    ``cache_root()/stats`` as there.
    """
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "stats"
    folder = root / stats.key.rsplit("/", 1)[0]
    return folder / f"null-layer_{stats.layer}-{config.scale}-{config.threshold!r}-{config.dtype}.safetensors"


def _load(path: Path, stats: KeyStats, config: NullSpaceConfig) -> Projector | None:
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("projector", "{}"))
        tensors = load_tensors(path)
        # Copies into fresh, aligned memory: BLAS rounds differently on the file's 8-byte
        # aligned views, and an edit from a cached projector must equal one from a fresh one.
        matrix, basis = tensors["matrix"].clone(), tensors["basis"].clone()
    except (SafetensorError, MemlocError, OSError, KeyError, ValueError):
        return None  # a damaged cache is only lost work: rebuild it
    if meta.get("format") != PROJECTOR_FORMAT or meta.get("count") != stats.count:
        return None
    fields = {k: meta[k] for k in ("kept", "cutoff", "min_eigenvalue", "max_eigenvalue", "leak")}
    return Projector(matrix, **fields, config=config, layer=stats.layer, key=stats.key, basis=basis)


def _save(path: Path, projector: Projector, stats: KeyStats) -> None:
    meta = {"format": PROJECTOR_FORMAT, "count": stats.count, **projector.record()}
    tensors = {"matrix": projector.matrix}
    if projector.basis is not None:
        tensors["basis"] = projector.basis.contiguous()
    save_tensors(path, tensors, metadata={"projector": json.dumps(meta)})


def null_space_projector(
    stats: KeyStats | torch.Tensor, config: NullSpaceConfig, *, cache_dir: str | Path | None = None
) -> Projector:
    """P onto the null space of C₀ (Fang et al. 2025), cached beside cached statistics.

    Statistics with a cache ``key`` (from `key_statistics_by_layer`) have their projector
    stored next to them, keyed by the statistics and ``config``; a bare tensor or uncached
    statistics are projected without a cache.

        projector = null_space_projector(stats[6], NullSpaceConfig())
        right = projector.project(delta.layers[0].right)  # ΔW ← ΔW P
    """
    if not isinstance(stats, KeyStats) or not stats.key:
        return compute_projector(stats, config)
    path = projector_file(stats, config, cache_dir)
    found = _load(path, stats, config)
    if found is not None:
        return found
    projector = compute_projector(stats, config)
    _save(path, projector, stats)
    return projector


def projectors_by_layer(
    stats_by_layer: Mapping[int, KeyStats | torch.Tensor],
    config: NullSpaceConfig,
    *,
    cache_dir: str | Path | None = None,
) -> dict[int, Projector]:
    """`null_space_projector` for every layer of ``stats_by_layer``."""
    return {
        layer: null_space_projector(stats, config, cache_dir=cache_dir)
        for layer, stats in stats_by_layer.items()
    }


def project_delta(delta: WeightDelta, projectors: Mapping[int, Projector]) -> WeightDelta:
    """ΔW ← ΔW P for every layer of ``delta`` (its right factors projected), so ΔW K₀ ≈ 0.

    This is the ``--null-space`` variant of ROME: the fact's update keeps only the part
    that leaves the preserved keys' outputs alone (MEMIT projects per layer inside its
    spread instead, so later layers see the projected earlier ones).
    """
    missing = sorted({part.layer for part in delta.layers} - set(projectors))
    if missing:
        raise NullSpaceError(f"no null-space projector for edited layer(s) {missing}")
    layers = tuple(
        LayerDelta(part.layer, part.left.double(), projectors[part.layer].project(part.right))
        for part in delta.layers
    )
    # The method's own diagnostics describe the update before projection; say what is left of it.
    spaces = {
        str(layer): {
            **projectors[layer].record(),
            "projected_update_norm": float(
                torch.stack([p.dense() for p in layers if p.layer == layer]).sum(0).norm()
            ),
        }
        for layer in sorted({p.layer for p in layers})
    }
    return WeightDelta(
        method=delta.method,
        layers=layers,
        case_ids=delta.case_ids,
        config={**delta.config, "null_space": True},
        info={**delta.info, "null_space": spaces},
        unedited=delta.unedited,
        parts=tuple(project_delta(part, projectors) for part in delta.parts),
    )
