"""Examples per second of the batched flip search against the reference approach.

Usage: python benchmarks/flip.py [RUN_DIR] [--n 10] [--device cpu|cuda]

Both sides search in weight mode (zeroing a unit's own weights, as Maini et al.'s
code does) on the same examples, reference batches and hold-out set:
  reference - one example at a time; every step really zeroes the chosen weights,
              recomputes the full parameter gradient of J, and scores each unit by
              <W_u, dJ/dW_u> (the first-order gain of zeroing W_u);
  memloc    - locate.neurons.flip_search, many examples per forward pass, scoring
              through a mask at the conv/linear output (the same quantity).
It exits non-zero when the two find different unit sets. The last line is the
speed-up in examples per second.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from _runs import run_or_train
from memloc.core.classifier.splits import RunData
from memloc.locate.classifier.unit_search import FlipConfig, FlipData, flip_search, zeroed_weights


def reference_search(model, adapter, data: FlipData, target: int, config: FlipConfig) -> tuple[bool, list]:
    """The straightforward loop: one example, real weight zeroing, full gradients each step."""
    layers = adapter.names[:-1]
    refs = data.reference(target, config.reference_size, config.seed)
    x = torch.cat([data.x[target : target + 1], data.x[refs]])
    y = torch.cat([data.y[target : target + 1], data.y[refs]])
    params = dict(model.named_parameters())

    def hold_correct() -> int:
        with torch.no_grad():
            return int((model(data.x_hold).argmax(1) == data.y_hold).sum())

    base = hold_correct()

    def drop(units) -> float:
        with zeroed_weights(model, adapter, units):
            return 100 * (base - hold_correct()) / len(data.x_hold)

    def flipped(units) -> bool:
        with zeroed_weights(model, adapter, units), torch.no_grad():
            return int(model(x[:1]).argmax(1)) != int(y[0])

    chosen: list = []
    banned: set = set()
    while True:
        with zeroed_weights(model, adapter, chosen):
            logits = model(x)
            if int(logits[0].argmax()) != int(y[0]):
                if drop(chosen) <= config.collateral:
                    break
                banned.add(chosen.pop())
                continue
            if len(chosen) >= config.max_units:
                return False, chosen
            ce = F.cross_entropy(logits, y, reduction="none")
            objective = ce[1:].mean() - ce[0]
            grads = dict(zip(params, torch.autograd.grad(objective, list(params.values())), strict=True))
            best, best_gain = None, 0.0
            for layer in layers:
                gains = 0.0
                for tensor, dim in adapter.unit_weights(model, layer):
                    name = next(n for n, p in params.items() if p is tensor)
                    product = (tensor.detach() * grads[name]).movedim(dim, 0)
                    gains = gains + product.reshape(product.shape[0], -1).sum(1)
                for u, gain in enumerate(gains.tolist()):
                    if (layer, u) not in chosen and (layer, u) not in banned and gain > best_gain:
                        best, best_gain = (layer, u), gain
        if best is None:
            return False, chosen
        chosen.append(best)
    if not chosen:
        return False, chosen
    while len(chosen) > 1:  # prune exactly as memloc specifies
        for i in range(len(chosen)):
            rest = chosen[:i] + chosen[i + 1 :]
            if flipped(rest) and drop(rest) <= config.collateral:
                chosen = rest
                break
        else:
            break
    return True, sorted(chosen)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", nargs="?")
    parser.add_argument("--n", type=int, default=10, help="noisy and clean examples each")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    run = run_or_train(args.run, epochs=15)
    model, adapter = run.load_model()
    model.to(device)
    data = RunData.load(run, device)
    flip_data = FlipData.from_run(data, 500, 0)
    targets = (
        torch.nonzero(data.noisy).flatten()[: args.n].tolist()
        + torch.nonzero(~data.noisy).flatten()[: args.n].tolist()
    )
    config = FlipConfig(mode="weights", max_units=100)

    start = time.perf_counter()
    ours = flip_search(model, adapter, flip_data, targets, config)
    memloc_s = time.perf_counter() - start
    start = time.perf_counter()
    reference = [reference_search(model, adapter, flip_data, t, config) for t in targets]
    reference_s = time.perf_counter() - start

    mismatches = [
        (t, r.units, ref[1])
        for t, r, ref in zip(targets, ours, reference, strict=True)
        if (r.flipped, r.units if r.flipped else None) != (ref[0], ref[1] if ref[0] else None)
    ]
    print(f"run: {run.root} ({run.spec().arch}), device {device}, {len(targets)} examples")
    print(f"memloc:    {memloc_s:.2f} s ({len(targets) / memloc_s:.2f} examples/s)")
    print(f"reference: {reference_s:.2f} s ({len(targets) / reference_s:.2f} examples/s)")
    print(
        f"flipped: {sum(r.flipped for r in ours)}/{len(ours)}; same unit sets: {len(targets) - len(mismatches)}/{len(targets)}"
    )
    if mismatches:
        for t, a, b in mismatches[:5]:
            print(f"  example {t}: memloc {a} vs reference {b}", file=sys.stderr)
        print("MISMATCH: the two searches found different unit sets", file=sys.stderr)
        return 1
    print(f"flip_speedup: {reference_s / memloc_s:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
