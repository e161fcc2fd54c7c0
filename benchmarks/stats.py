"""Tokens per second of memloc's key statistics against a straightforward loop.

Usage: python benchmarks/stats.py [--model smollm2-135m] [--texts 64] [--layers 6 7 8]
                                  [--device cpu] [--threads N]

Both sides compute C = E[k kᵀ] (float64 sums) at the same layers over the same
texts, the model's own generated corpus (sampled once, not timed):
  reference - one text per forward pass, one layer per pass, the whole model run
              every time (unembedding included), C += KᵀK per text;
  memloc    - edit.stats.key_statistics_by_layer end to end (weights hash, batching
              by length, every layer from one pass that stops after the deepest,
              eigenvalues, cache writes) into an empty cache folder.
It exits non-zero when the two C differ by more than 1e-6 relative (max |ΔC| over
max |C|). The last line is the speed-up in tokens per second.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from memloc.core.hooks import trace
from memloc.core.lm.loading import load_language_model
from memloc.core.sites import Site
from memloc.edit.corpus import GenerationConfig, generate_texts
from memloc.edit.stats import StatsConfig, key_statistics_by_layer

MAX_TOKENS = 128


@torch.no_grad()
def reference_statistics(lm, texts: list[str], layers: list[int]) -> tuple[dict[int, torch.Tensor], int]:
    """The straightforward loop: every (text, layer) pair is its own full forward pass."""
    width = lm.adapter.d_mlp
    sums = {layer: torch.zeros(width, width, dtype=torch.float64, device=lm.device) for layer in layers}
    tokens = 0
    for text in texts:
        ids = lm.tokenizer(text, truncation=True, max_length=MAX_TOKENS)["input_ids"]
        ids = torch.tensor([ids], device=lm.device)
        tokens += ids.shape[1]
        for layer in layers:
            site = Site(layer, "mlp.post")
            with trace(lm.model, lm.adapter, [site]) as seen:
                lm.model(input_ids=ids)
            keys = seen[site][0].double()
            sums[layer] += keys.T @ keys
    return {layer: (total / tokens).cpu() for layer, total in sums.items()}, tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--layers", type=int, nargs="+", default=[6, 7, 8])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_language_model(args.model, device=args.device)
    print(f"model {args.model} on {lm.device}, {torch.get_num_threads()} threads, layers {args.layers}")

    start = time.perf_counter()
    texts = generate_texts(lm, args.texts, GenerationConfig(length=64, batch_size=32, seed=0))
    print(f"generated {len(texts)} texts in {time.perf_counter() - start:.1f} s (not timed below)")

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        config = StatsConfig(corpus=str(corpus), samples=len(texts), batch_size=args.batch_size)
        start = time.perf_counter()
        ours = key_statistics_by_layer(lm, args.layers, config, cache_dir=Path(tmp) / "cache")
        fast = time.perf_counter() - start

    start = time.perf_counter()
    reference, tokens = reference_statistics(lm, texts, args.layers)
    slow = time.perf_counter() - start

    worst = 0.0
    for layer in args.layers:
        assert ours[layer].count == tokens, (ours[layer].count, tokens)
        diff = (ours[layer].second_moment - reference[layer]).abs().max() / reference[layer].abs().max()
        worst = max(worst, diff.item())
    print(f"{tokens} tokens, {len(args.layers)} layers; max |ΔC| / max |C| = {worst:.2e}")
    print(f"reference: {slow:7.2f} s  {tokens / slow:9.1f} tokens/s (one text, one layer per pass)")
    print(f"memloc:    {fast:7.2f} s  {tokens / fast:9.1f} tokens/s (batched, all layers in one pass)")
    for layer in args.layers:
        s = ours[layer]
        print(f"  layer {layer}: condition {s.condition:.3g}, shrinkage {s.shrinkage:.3g}")
    if worst > 1e-6:
        print(f"FAIL: the two statistics differ by {worst:.2e} relative (more than 1e-6)")
        return 1
    print(f"stats: {slow / fast:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
