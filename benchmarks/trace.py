"""Causal tracing on SmolLM2-135M: memloc's fast path against one cell per forward pass.

Usage: python benchmarks/trace.py [--device auto|cpu|cuda] [--kinds hidden[,mlp,attn]]
                                  [--samples 10] [--batch-size 256] [--threads N] [--figure PNG]

One fact ("The Eiffel Tower is located in the city of" -> Paris), every prompt token
and layer, in one process:
  plain  - the reference approach (ROME's trace_with_patch): one full-sequence forward
           pass per (token, layer) cell, the noise samples batched;
  memloc - locate.tracing's fast path: (cell x sample) rows batched, the corrupted
           prefix's key/value cache and the lower layers' hidden states reused.
Both use the same seeded noise. It exits non-zero when the grids differ by more than
1e-4 x their maximum. The last line is the speed-up of memloc over plain.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from memloc.core.lm.facts import Fact
from memloc.core.lm.loading import load_language_model
from memloc.locate.lm.tracing import TraceConfig, trace_fact
from memloc.locate.lm.tracing_figures import trace_heatmaps

FACT = Fact("eiffel", "The {} is located in the city of", "Eiffel Tower", "Paris")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="auto")
    parser.add_argument("--kinds", default="hidden", help="comma-separated: hidden, mlp, attn")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--figure", help="also save the fast path's heat maps to this PNG")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_language_model("smollm2-135m", device=args.device)
    device = lm.device
    kinds = tuple(k.strip() for k in args.kinds.split(","))
    fast_config = TraceConfig(samples=args.samples, kinds=kinds, batch_size=args.batch_size)
    plain_config = TraceConfig(samples=args.samples, kinds=kinds, method="plain")

    with torch.inference_mode():  # warm-up: first-call allocations and kernel selection
        lm.model(input_ids=torch.tensor([lm.tokenizer(FACT.text)["input_ids"]], device=device))
    fast_s, fast = timed(lambda: trace_fact(lm, FACT, fast_config), device)
    plain_s, plain = timed(lambda: trace_fact(lm, FACT, plain_config), device)

    n_tokens, n_layers = plain.grids[kinds[0]].shape
    print(
        f"model: smollm2-135m ({n_layers} layers), device {device}, torch threads {torch.get_num_threads()}"
    )
    print(f"fact: {FACT.text!r} -> {FACT.target_true!r}; tokens {plain.tokens}, subject {plain.subject}")
    print(
        f"cells: {len(kinds)} kinds {list(kinds)} x {n_tokens} tokens x {n_layers} layers, {args.samples} samples"
    )
    print(f"P(clean) {plain.clean_prob:.4f}, P(corrupted) {plain.corrupted_prob:.4f}")
    mismatch = False
    for kind in kinds:
        diff = float(np.abs(fast.grids[kind] - plain.grids[kind]).max())
        scale = float(np.abs(plain.grids[kind]).max())
        peak = np.unravel_index(np.argmax(plain.grids[kind]), plain.grids[kind].shape)
        print(
            f"{kind}: max |fast - plain| {diff:.2e} (max {scale:.4f}); peak p {scale:.4f} at token {peak[0]}, layer {peak[1]}"
        )
        mismatch |= diff > 1e-4 * scale
    if "mlp" in kinds:
        print(f"best_layer (peak MLP effect at the last subject token): {fast.best_layer}")
    if args.figure:
        trace_heatmaps(fast).savefig(args.figure, dpi=120)
        print(f"heat maps: {args.figure}")
    if mismatch:
        print("MISMATCH: the fast grids differ from the one-cell-per-pass reference", file=sys.stderr)
        return 1
    print(f"plain (one cell per forward pass): {plain_s:.2f} s")
    print(f"memloc fast path (batch {args.batch_size}): {fast_s:.2f} s")
    print(f"trace: {plain_s / fast_s:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
