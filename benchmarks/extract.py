"""Greedy extraction over many prefixes: memloc's batched decoder against `generate` one at a time.

Usage: python benchmarks/extract.py [--model fixtures/fixture-lm] [--prefixes 256] [--prefix 16]
       [--suffix 32] [--batch-size 64] [--device cpu]

Both decode ``--suffix`` greedy tokens after each of ``--prefixes`` prefixes of the
local corpus (random in-vocabulary tokens where none is given):
  batched - core/lm/decoding.greedy_continue: left-padded rows, one key/value cache;
  generate - Hugging Face ``generate`` (do_sample=False), one prefix at a time.
It exits non-zero when any continuation differs. The last line is the tokens-per-second
ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from memloc.core.lm.decoding import greedy_continue
from memloc.core.lm.loading import load_language_model

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "fixture-lm"


def prefixes_of(lm, count: int, length: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    special = set(lm.tokenizer.all_special_ids)
    allowed = torch.tensor([i for i in range(len(lm.tokenizer)) if i not in special])
    picks = torch.randint(len(allowed), (count, length), generator=generator)
    return allowed[picks].tolist()


def synchronized(lm) -> None:
    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)


@torch.no_grad()
def one_by_one(lm, prefixes: list[list[int]], new_tokens: int) -> list[tuple[int, ...]]:
    out = []
    for prefix in prefixes:
        ids = torch.tensor([prefix], device=lm.device)
        generated = lm.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=None,  # never stop early: the batched decoder decodes every token too
            pad_token_id=lm.tokenizer.eos_token_id,
        )
        out.append(tuple(generated[0, len(prefix) :].tolist()))
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(FIXTURE))
    parser.add_argument("--prefixes", type=int, default=256)
    parser.add_argument("--prefix", type=int, default=16)
    parser.add_argument("--suffix", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: a loaded machine skews less)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_language_model(args.model, device=args.device)
    prefixes = prefixes_of(lm, args.prefixes, args.prefix)
    greedy_continue(lm, prefixes[:2], 2)  # warm-up

    synchronized(lm)
    start = time.perf_counter()
    batched = greedy_continue(lm, prefixes, args.suffix, batch_size=args.batch_size)
    synchronized(lm)
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    plain = one_by_one(lm, prefixes, args.suffix)
    synchronized(lm)
    plain_s = time.perf_counter() - start

    tokens = args.prefixes * args.suffix
    print(
        f"model: {args.model}, device {lm.device}; {args.prefixes} prefixes of {args.prefix} -> {args.suffix}"
    )
    print(f"batched ({args.batch_size} rows): {batched_s:.2f} s, {tokens / batched_s:.0f} tokens/s")
    print(f"generate (one at a time): {plain_s:.2f} s, {tokens / plain_s:.0f} tokens/s")
    differ = sum(a != b for a, b in zip(batched, plain, strict=True))
    if differ:
        print(f"MISMATCH: {differ} of {len(plain)} continuations differ from generate's", file=sys.stderr)
        return 1
    print("identical continuations: all")
    print(f"extract: {plain_s / batched_s:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
