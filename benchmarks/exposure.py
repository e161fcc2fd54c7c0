"""Exact exposure over 10^5 candidates: the shared-prefix cache against scoring each in full.

Usage: python benchmarks/exposure.py [--model fixtures/fixture-lm] [--batch-size 512] [--slots 5]
       [--device cpu]

The canary is a fixed sentence followed by five word slots of ten options each (10^5
candidates, all in the fixture LM's vocabulary). Both score every candidate's
log-perplexity and rank the secret (locate/lm/exposure.py):
  trie   - memloc's default: the fixed text's cache is shared, and each distinct token
           prefix of the slots runs once (11,111 prefixes instead of 10^5 rows);
  shared - the fixed text runs once; its cache is shared by every candidate's row;
  full   - every candidate is run from its first token.
It exits non-zero when the ranks differ. The last line is the speed-up of the
default (trie) over full scoring; the shared-prefix ratio is printed above it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from memloc.core.lm.canaries import Canary
from memloc.core.lm.canary_space import CanarySpace
from memloc.core.lm.loading import load_language_model
from memloc.locate.lm.exposure import ExposureConfig, canary_exposure

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "fixture-lm"
PREFIX = " ".join(["the city of the river is known in the country and the language of the tower is"] * 3)


def canary_for(lm, slots: int) -> Canary:
    vocab = [w for w in lm.tokenizer.get_vocab() if w.isalpha() and w.islower()]
    options = "|".join(sorted(vocab)[:10])
    template = PREFIX + f" {{choice:{options}}}" * slots
    space = CanarySpace.parse(template)
    secret = space.values(31_415 % space.size)
    return Canary(template, secret, space.fill(secret), 1, ())


def timed(lm, canary: Canary, config: ExposureConfig):
    start = time.perf_counter()
    result = canary_exposure(lm, [canary], config).canaries[0]
    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)
    return result, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(FIXTURE))
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--slots", type=int, default=5, help="word slots of ten options: |R| = 10^slots")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: a loaded machine skews less)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_language_model(args.model, device=args.device)
    canary = canary_for(lm, args.slots)
    timed(lm, canary_for(lm, 1), ExposureConfig(batch_size=args.batch_size))  # warm-up
    trie, trie_s = timed(lm, canary, ExposureConfig(batch_size=args.batch_size))
    shared, shared_s = timed(lm, canary, ExposureConfig(batch_size=args.batch_size, trie=False))
    full, full_s = timed(
        lm, canary, ExposureConfig(batch_size=args.batch_size, shared_prefix=False, trie=False)
    )
    print(f"model: {args.model}, device {lm.device}; |R| = {shared.space_size}, canary {canary.text!r}")
    print(f"trie:          {trie_s:.2f} s, rank {trie.rank}, exposure {trie.exposure:.3f}")
    print(f"shared prefix: {shared_s:.2f} s, rank {shared.rank}, exposure {shared.exposure:.3f}")
    print(f"full:          {full_s:.2f} s, rank {full.rank}, exposure {full.exposure:.3f}")
    if not trie.rank == shared.rank == full.rank:
        print("MISMATCH: the trie, shared-prefix and full ranks differ", file=sys.stderr)
        return 1
    print(f"shared prefix against full: {full_s / shared_s:.1f}x")
    print(f"exposure: {full_s / trie_s:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
