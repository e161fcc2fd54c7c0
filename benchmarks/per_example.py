"""Per-example evaluation on the CPU: memloc's cache-sized chunks against one large batch.

Usage: python benchmarks/per_example.py [RUN_DIR] [--examples N]

Without RUN_DIR it trains a small CNN on digits first. It evaluates the run's
training images, repeated to N examples (give the demo's run for 1x28x28 images).
It times, in one process:
  batched - a straightforward loop of forward passes over batches of 1024 examples;
  memloc  - core.classifier.evaluation.per_example (chunks of CPU_CHUNK on the CPU).
It exits non-zero when the predictions differ or the losses differ beyond float rounding.
The last line is the speed-up of memloc over the straightforward loop.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from _runs import run_or_train
from memloc.core.classifier.evaluation import per_example
from memloc.core.classifier.splits import RunData


@torch.no_grad()
def batched(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    losses, preds = [], []
    for start in range(0, len(x), 1024):
        logits = model(x[start : start + 1024])
        losses.append(F.cross_entropy(logits, y[start : start + 1024], reduction="none"))
        preds.append(logits.argmax(dim=1))
    return torch.cat(losses), torch.cat(preds)


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", nargs="?")
    parser.add_argument("--examples", type=int, default=4096)
    args = parser.parse_args()
    run = run_or_train(args.run_dir, epochs=3)
    model, _ = run.load_model()
    data = RunData.load(run, torch.device("cpu"))
    reps = -(-args.examples // len(data.x_train))
    x = data.x_train.repeat(reps, *([1] * (data.x_train.dim() - 1)))[: args.examples]
    y = data.given.repeat(reps)[: args.examples]
    ref_loss, ref_pred = batched(model, x, y)
    loss, pred = per_example(model, x, y)
    if not torch.equal(pred, ref_pred) or not torch.allclose(loss, ref_loss, rtol=1e-4, atol=1e-6):
        print("per_example: results differ from the batched loop", file=sys.stderr)
        return 1
    base = best_of(lambda: batched(model, x, y))
    ours = best_of(lambda: per_example(model, x, y))
    print(f"{len(x)} examples of shape {tuple(x.shape[1:])}: batched {base:.3f}s, memloc {ours:.3f}s")
    print(f"per_example_cpu: {base / ours:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
