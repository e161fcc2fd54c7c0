"""Knowledge-neuron IG over all layers for one fact: the fast path against the plain one.

Usage: python benchmarks/ig.py [--model smollm2-135m] [--steps 20] [--device auto|cpu|cuda]

Both compute Dai et al.'s left-Riemann integrated gradients (m steps, zero baseline)
of P(" Paris") for every neuron of every layer at the prompt's last token:
  plain - the reference approach: per layer, the full prompt with the m steps batched;
  fast  - the prefix runs once and keeps its key/value cache; the m steps of every
          layer are rows of one batch over the last token only.
It exits non-zero when max |fast - plain| > 1e-4 x max |plain|. The last line is the
speed-up.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from memloc.core.lm.loading import load_language_model
from memloc.locate.lm.knowledge_neurons import KNConfig, attribute_prompt

PROMPT = "The Eiffel Tower, the famous landmark, is located in the city of"
TARGET = "Paris"


def timed(lm, config: KNConfig):
    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)
    start = time.perf_counter()
    result = attribute_prompt(lm, PROMPT, TARGET, config)
    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)
    return result, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    lm = load_language_model(args.model, device=args.device)
    tokens = len(lm.tokenizer(PROMPT)["input_ids"])

    attribute_prompt(lm, PROMPT, TARGET, KNConfig(steps=2, layers=(0,)))  # warm-up
    fast, fast_s = timed(lm, KNConfig(steps=args.steps, method="fast"))
    plain, plain_s = timed(lm, KNConfig(steps=args.steps, method="plain"))

    scale = plain.scores.abs().max().item()
    error = (fast.scores - plain.scores).abs().max().item()
    print(f"model: {args.model}, device {lm.device}, {lm.n_layers} layers x {lm.adapter.d_mlp} neurons")
    print(f"prompt: {tokens} tokens, P({TARGET!r}) = {fast.probability:.3f}, steps {args.steps}")
    print(f"fast:  {fast_s:.2f} s")
    print(f"plain: {plain_s:.2f} s")
    print(f"max |fast - plain| = {error:.3g} ({error / scale:.2e} of max |plain| = {scale:.3g})")
    if error > 1e-4 * scale:
        print("MISMATCH: the fast path differs from the plain computation", file=sys.stderr)
        return 1
    print(f"ig: {plain_s / fast_s:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
