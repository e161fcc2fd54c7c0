"""AlphaEdit at F = 1,536 (SmolLM2-135M's d_mlp): projector build and one batch update, time and peak memory.

    python benchmarks/alphaedit.py [--batch 100] [--previous 900] [--stats FILE] [--device cpu|cuda]

Both sides compute the same thing from the same inputs (Fang et al., ICLR 2025):
P onto the null space of the preserved keys' second moment C₀ (eigenvalues below
1e-2 × λ_max), then for one batch of edit keys K₁ (F, n) and residuals R (D, n), with
the earlier edits' K_pK_pᵀ of ``--previous`` keys, the projected update

    ΔW P = R K₁ᵀ P (K_pK_pᵀP + K₁K₁ᵀP + αI)⁻¹ P,   α = 1.

- memloc: `edit.null_space.compute_projector` (and `null_space_projector`'s cache: a
  second call loads P from the statistics' cache folder) and
  `edit.alphaedit.alphaedit_layer_update` with the projector's basis Û (P = ÛÛᵀ): the
  system solved in the k kept coordinates, Û(Ûᵀ(K_pK_pᵀ + K₁K₁ᵀ)Û + αI)⁻¹ÛᵀK₁, by Cholesky
  (O(F²k) where forming P A P is O(F³)), the update kept as factors (D, n), (F, n).
- straightforward, the paper's equation transcribed: full eigh, P = ÛÛᵀ, the non-symmetric
  F × F matrix inverted explicitly, the dense (D, F) ΔW formed and multiplied by P.

Inputs: by default synthetic keys shaped like SmolLM2's layer-6 statistics (6,435 tokens;
the preserved keys span 1,024 of the 1,536 directions, eigenvalues log-spaced over a
decade, so C₀ has an exact null space of 512 directions); ``--stats FILE`` takes a real `KeyStats`
safetensors file (`memloc edit stats` writes them) instead. Each phase runs in its own
process so that its peak memory is its own: peak RSS above the phase's start, sampled
every millisecond (CPU), or ``torch.cuda.max_memory_allocated`` (CUDA). Times are the
median of ``--repeat`` runs on one thread.

Agreement (exit 1 otherwise): the two P and the two ΔW P match (relative Frobenius gap
≤ 1e-8), and for both ‖ΔW P K₀‖ ≤ 1e-4 ‖ΔW P‖ ‖K₀‖ on the synthetic keys (with ``--stats``,
computed from C₀ as ‖ΔW K₀‖² = n₀ tr(ΔW C₀ ΔWᵀ), and bounded by √(leak / tr C₀) instead,
since a real C₀ has no exact null space). The last line is
``alphaedit: <straightforward seconds / memloc seconds>x`` for build + one batch update.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from memloc.core.checkpoints import load_tensors, save_tensors
from memloc.edit.alphaedit import alphaedit_layer_update
from memloc.edit.null_space import NullSpaceConfig, compute_projector, null_space_projector
from memloc.edit.stats import KeyStats, spectrum

WIDTH, D_MODEL, TOKENS, SPAN = 1536, 576, 6435, 1024  # SmolLM2-135M, layer 6's statistics
CONFIG = NullSpaceConfig(threshold=1e-2)
ALPHA = 1.0
T = TypeVar("T")


# --- the straightforward implementation -------------------------------------------------------------


def plain_projector(c0: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(c0.double())
    basis = vectors[:, values < CONFIG.threshold * values[-1]]
    return basis @ basis.T


def plain_update(p: torch.Tensor, gram: torch.Tensor, k1: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """ΔW P = R K₁ᵀ P (K_pK_pᵀP + K₁K₁ᵀP + αI)⁻¹ P, dense, as written in the paper."""
    eye = torch.eye(p.shape[0], dtype=torch.float64, device=p.device)
    inverse = torch.linalg.inv(gram @ p + k1 @ k1.T @ p + ALPHA * eye)
    return r @ k1.T @ p @ inverse @ p


# --- inputs -----------------------------------------------------------------------------------------


def synthetic_inputs(batch: int, previous: int) -> dict[str, torch.Tensor]:
    """Keys shaped like SmolLM2's: a 1,024-dimensional span with a decaying spectrum."""
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(WIDTH, SPAN, generator=gen, dtype=torch.float64)).Q
    # Eigenvalues over a decade: even as sampled from 6,435 tokens all stay above the 1e-2 cutoff.
    scale = torch.logspace(0, -0.5, SPAN, dtype=torch.float64)

    def keys(n: int, off_span: float) -> torch.Tensor:
        inside = basis @ (scale[:, None] * torch.randn(SPAN, n, generator=gen, dtype=torch.float64))
        return inside + off_span * torch.randn(WIDTH, n, generator=gen, dtype=torch.float64)

    k0 = keys(TOKENS, 0.0)
    # New facts' keys also reach directions the preserved keys never use; that is what P keeps.
    k1, kp = keys(batch, 0.1), keys(previous, 0.1)
    residuals = torch.randn(D_MODEL, batch, generator=gen, dtype=torch.float64)
    return {"c0": k0 @ k0.T / TOKENS, "k0": k0, "k1": k1, "gram": kp @ kp.T, "r": residuals}


def real_inputs(path: str, batch: int, previous: int) -> dict[str, torch.Tensor]:
    """C₀ from a statistics file; edit keys drawn from it (C₀^½ g, plus a little off its span)."""
    c0 = load_tensors(path)["second_moment"].double()
    values, vectors = torch.linalg.eigh(c0)
    root = vectors * values.clamp(min=0).sqrt()
    gen = torch.Generator().manual_seed(0)

    def keys(n: int) -> torch.Tensor:
        return root @ torch.randn(len(c0), n, generator=gen, dtype=torch.float64)

    k1, kp = keys(batch), keys(previous)
    residuals = torch.randn(D_MODEL, batch, generator=gen, dtype=torch.float64)
    return {"c0": c0, "k1": k1, "gram": kp @ kp.T, "r": residuals}


# --- one phase in its own process -------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measured(fn: Callable[[], T], device: torch.device, repeat: int) -> tuple[T, float, float]:
    """(result, median seconds, peak MB above the start) of ``fn`` run ``repeat`` times."""
    peak, stop = [_rss()], threading.Event()
    start = peak[0]

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    seconds = []
    for _ in range(repeat):
        began = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - began)
    stop.set()
    sampler.join()
    top = torch.cuda.max_memory_allocated() if device.type == "cuda" else max(peak[0], _rss())
    return out, statistics.median(seconds), (top - start) / 2**20


def phase(name: str, folder: Path, device: torch.device, repeat: int) -> dict:
    # Copied out of the memory-mapped file, so that no page faults count in a phase's memory.
    inputs = {k: v.to(device).clone() for k, v in load_tensors(folder / "inputs.safetensors").items()}
    c0, k1, gram, r = inputs["c0"], inputs["k1"], inputs["gram"], inputs["r"]
    if name == "memloc-build":
        out, s, mb = measured(lambda: compute_projector(c0, CONFIG), device, repeat)
        assert out.basis is not None
        save_tensors(folder / "p-memloc.safetensors", {"p": out.matrix.cpu(), "basis": out.basis.cpu()})
        return {"seconds": s, "peak_mb": mb, "kept": out.kept, "leak": out.leak}
    if name == "memloc-cached":
        stats = KeyStats(6, c0, TOKENS, 100, spectrum(c0, 1e6), key=f"bench-{os.getpid()}/synthetic/layer_6")
        null_space_projector(stats, CONFIG, cache_dir=folder / "cache")  # builds and stores it

        def load() -> float:  # read every value: the file is memory-mapped
            return float(null_space_projector(stats, CONFIG, cache_dir=folder / "cache").matrix.sum())

        _, s, mb = measured(load, device, repeat)
        return {"seconds": s, "peak_mb": mb}
    if name == "memloc-update":
        found = {k: v.to(device) for k, v in load_tensors(folder / "p-memloc.safetensors").items()}
        p, basis = found["p"], found["basis"]
        out, s, mb = measured(
            lambda: alphaedit_layer_update(k1, r, p, gram, ALPHA, layer=6, basis=basis), device, repeat
        )
        left, right = out
        save_tensors(folder / "dw-memloc.safetensors", {"dw": (left @ right.T).cpu()})
        return {"seconds": s, "peak_mb": mb}
    if name == "plain-build":
        out, s, mb = measured(lambda: plain_projector(c0), device, repeat)
        save_tensors(folder / "p-plain.safetensors", {"p": out.cpu()})
        return {"seconds": s, "peak_mb": mb}
    p = load_tensors(folder / "p-plain.safetensors")["p"].to(device)
    out, s, mb = measured(lambda: plain_update(p, gram, k1, r), device, repeat)
    save_tensors(folder / "dw-plain.safetensors", {"dw": out.cpu()})
    return {"seconds": s, "peak_mb": mb}


# Alternating sides, so that a load on the machine that comes and goes hits both alike.
PHASES = ("memloc-build", "plain-build", "memloc-update", "plain-update", "memloc-cached")


# --- the comparison ---------------------------------------------------------------------------------


def relative_leak(dw: torch.Tensor, inputs: dict[str, torch.Tensor]) -> float:
    """‖ΔW K₀‖ / (‖ΔW‖ ‖K₀‖), from K₀ or, without it, from C₀ (the n₀ cancels)."""
    if "k0" in inputs:
        k0 = inputs["k0"]
        return ((dw @ k0).norm() / (dw.norm() * k0.norm())).item()
    c0 = inputs["c0"]
    return (torch.trace(dw @ c0 @ dw.T).clamp(min=0).sqrt() / (dw.norm() * c0.trace().sqrt())).item()


def gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def report(folder: Path, inputs: dict[str, torch.Tensor], results: dict[str, dict], source: str) -> int:
    p_m, p_p = (load_tensors(folder / f"p-{s}.safetensors")["p"] for s in ("memloc", "plain"))
    dw_m, dw_p = (load_tensors(folder / f"dw-{s}.safetensors")["dw"] for s in ("memloc", "plain"))
    build, cached, update = (results[f"memloc-{k}"] for k in ("build", "cached", "update"))
    plain_build, plain_upd = results["plain-build"], results["plain-update"]
    leaks = relative_leak(dw_m, inputs), relative_leak(dw_p, inputs)
    bound = 1e-4 if "k0" in inputs else (build["leak"] / inputs["c0"].trace().item()) ** 0.5
    print(f"F = {WIDTH}, D = {D_MODEL}, batch {inputs['k1'].shape[1]} keys, {source}")
    print(
        f"null space: {build['kept']} of {WIDTH} directions kept, largest kept eigenvalue {build['leak']:.3g}"
    )
    for name, r in (
        ("memloc projector build (eigh)", build),
        ("memloc projector from cache", cached),
        ("memloc batch update (k × k Cholesky)", update),
        ("straightforward projector build", plain_build),
        ("straightforward batch update (inv)", plain_upd),
    ):
        print(f"  {name:36s} {r['seconds'] * 1000:9.1f} ms   peak {r['peak_mb']:7.1f} MB")
    print(f"agreement: |P gap| {gap(p_m, p_p):.1e}, |ΔW P gap| {gap(dw_m, dw_p):.1e}")
    print(f"‖ΔW P K₀‖/(‖ΔW P‖‖K₀‖): memloc {leaks[0]:.1e}, straightforward {leaks[1]:.1e} (bar {bound:.1e})")
    update_ratio = plain_upd["seconds"] / update["seconds"]
    cached_ratio = (plain_build["seconds"] + plain_upd["seconds"]) / (cached["seconds"] + update["seconds"])
    print(f"batch update alone: {update_ratio:.1f}x; with the cached projector: {cached_ratio:.1f}x")
    ok = gap(p_m, p_p) <= 1e-8 and gap(dw_m, dw_p) <= 1e-8 and max(leaks) <= bound
    total = (plain_build["seconds"] + plain_upd["seconds"]) / (build["seconds"] + update["seconds"])
    print(f"alphaedit: {total:.1f}x")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--previous", type=int, default=900, help="earlier edits' keys in K_pK_pᵀ")
    parser.add_argument(
        "--stats", default="", help="a KeyStats safetensors file (F = 1,536) instead of synthetic"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--phase", choices=PHASES)
    parser.add_argument("--folder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.phase:
        print(json.dumps(phase(args.phase, Path(args.folder), torch.device(args.device), args.repeat)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.stats:
            inputs, source = real_inputs(args.stats, args.batch, args.previous), f"C₀ from {args.stats}"
        else:
            inputs, source = synthetic_inputs(args.batch, args.previous), "synthetic SmolLM2-shaped keys"
        source += f", K_pK_pᵀ of {args.previous} earlier keys, {args.device}, one thread"
        save_tensors(folder / "inputs.safetensors", {k: v for k, v in inputs.items() if k != "k0"})
        results = {}
        for name in PHASES:
            command = [sys.executable, __file__, "--phase", name, "--folder", tmp, "--device", args.device]
            out = subprocess.run(
                [*command, "--repeat", str(args.repeat)], capture_output=True, text=True, check=True
            )
            results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        return report(folder, inputs, results, source)


if __name__ == "__main__":
    raise SystemExit(main())
