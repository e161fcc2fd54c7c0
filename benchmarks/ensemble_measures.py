"""Seconds and peak memory of memloc's influence and LiRA on a large synthetic ensemble,
against straightforward versions of the same computations.

Usage: python benchmarks/ensemble_measures.py [--examples 10000] [--models 64] [--tests 2000]
                                              [--classes 10] [--loop-examples 100] [--seed 0]

The ensemble is synthetic but shaped like a real one: a balanced membership from
draw_membership, logits whose given-label margin has a per-example difficulty plus an
in-effect (larger when the model trained on the example), and test examples whose
margin rises when their "near-duplicate" training example (test j <-> train j) was in.

  influence  memloc    - influence_pairs, chunks of 1024 training examples, top 100;
             baseline  - the dense N x M matrix, one training example at a time
                         (mean correctness over its in models minus over its out models),
                         then a full sort for the top 100.
  LiRA       memloc    - lira_from_phi: every model as target, all five variants pooled;
             baseline  - per target, per example: fit the in/out Gaussians over the other
                         models and score with scipy.stats.norm, on the first
                         --loop-examples examples, its time scaled up to all N.
Peak memory is tracemalloc's peak of each side. It exits non-zero when the top pairs
or the scores differ (1e-9 relative). The last line is the total speed-up.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
from memloc.core.ensemble.logits import EnsembleLogits
from memloc.core.ensemble.membership import MembershipConfig, draw_membership
from memloc.locate.classifier.influence import InfluenceConfig, influence_pairs
from memloc.locate.classifier.lira import logit_confidence
from memloc.locate.classifier.lira_attack import (
    LiraConfig,
    attack_scores,
    lira_from_phi,
    negative_cross_entropy,
    shadow_statistics,
)
from scipy.stats import norm

TOP = 100


def synthetic_ensemble(examples: int, models: int, tests: int, classes: int, seed: int) -> EnsembleLogits:
    membership = draw_membership(MembershipConfig(models=models, keep=0.5, seed=seed), examples)
    inside = membership.matrix
    rng = np.random.default_rng(seed)
    given = rng.integers(0, classes, examples)
    test_labels = rng.integers(0, classes, tests)
    difficulty = rng.normal(1.0, 2.0, examples)
    train = rng.normal(0.0, 1.0, (models, examples, classes)).astype(np.float32)
    margin = difficulty + 2.0 * inside + rng.normal(0.0, 1.0, inside.shape)
    np.put_along_axis(train, np.broadcast_to(given, inside.shape)[..., None], margin[..., None], axis=-1)
    test = rng.normal(0.0, 1.0, (models, tests, classes)).astype(np.float32)
    linked = inside[:, np.arange(tests) % examples]  # test j's near-duplicate is train j
    test_margin = rng.normal(1.0, 2.0, tests) + 1.5 * linked + rng.normal(0.0, 1.0, linked.shape)
    np.put_along_axis(
        test, np.broadcast_to(test_labels, linked.shape)[..., None], test_margin[..., None], axis=-1
    )
    return EnsembleLogits(membership, train, test, given, test_labels)


def measured(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, seconds, peak MiB of traced allocations)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


def dense_influence_top(ens: EnsembleLogits) -> list[tuple[int, int, float]]:
    inside, correct = ens.membership.matrix, ens.test_correct().astype(np.float64)
    dense = np.empty((inside.shape[1], correct.shape[1]))
    for i in range(inside.shape[1]):
        dense[i] = correct[inside[:, i]].mean(0) - correct[~inside[:, i]].mean(0)
    flat = dense.ravel()
    order = np.lexsort((np.arange(flat.size), -flat))[:TOP]
    tests = dense.shape[1]
    return [(int(k // tests), int(k % tests), float(flat[k])) for k in order]


def loop_lira(phi: np.ndarray, inside: np.ndarray, examples: int) -> np.ndarray:
    """(K, examples, 2) online and offline scores with per-example σ, one fit per (target, example)."""
    models = phi.shape[0]
    out = np.empty((models, examples, 2))
    for t in range(models):
        shadows = np.arange(models) != t
        for i in range(examples):
            ins = phi[shadows & inside[:, i], i]
            outs = phi[shadows & ~inside[:, i], i]
            s_in, s_out = max(ins.std(ddof=1), 1e-6), max(outs.std(ddof=1), 1e-6)
            x = phi[t, i]
            out[t, i, 0] = norm.logpdf(x, ins.mean(), s_in) - norm.logpdf(x, outs.mean(), s_out)
            out[t, i, 1] = norm.logcdf(x, outs.mean(), s_out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--models", type=int, default=64)
    parser.add_argument("--tests", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--loop-examples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ens = synthetic_ensemble(args.examples, args.models, args.tests, args.classes, args.seed)
    print(f"ensemble: K={args.models}, N={args.examples}, M={args.tests}, C={args.classes}")
    ok = True

    result, fast_infl, fast_mem = measured(lambda: influence_pairs(ens, InfluenceConfig(top=TOP, chunk=1024)))
    reference, slow_infl, slow_mem = measured(lambda: dense_influence_top(ens))
    ours = [(p.train, p.test, p.influence) for p in result.pairs]
    same = [o[:2] for o in ours] == [r[:2] for r in reference] and np.allclose(
        [o[2] for o in ours], [r[2] for r in reference], rtol=1e-9, atol=1e-12
    )
    ok &= same
    print(f"influence memloc   {fast_infl:7.2f} s  peak {fast_mem:7.1f} MiB  (top pair {ours[0]})")
    print(f"influence baseline {slow_infl:7.2f} s  peak {slow_mem:7.1f} MiB  top {TOP} equal: {same}")

    given = np.broadcast_to(ens.given, ens.train_logits.shape[:2])
    inside = ens.membership.matrix

    def memloc_lira():
        phi = logit_confidence(ens.train_logits, given)
        return lira_from_phi(phi, inside, negative_cross_entropy(ens.train_logits, given), LiraConfig())

    lira, fast_lira, fast_lmem = measured(memloc_lira)
    phi = logit_confidence(ens.train_logits, given)
    n = args.loop_examples
    loop, loop_s, loop_mem = measured(lambda: loop_lira(phi, inside, n))
    slow_lira = loop_s * args.examples / n
    scores = attack_scores(phi, shadow_statistics(phi, inside))
    ours_scores = np.stack([scores.online[:, :n], scores.offline[:, :n]], -1)
    close = bool(np.allclose(ours_scores, loop, rtol=1e-9, atol=1e-9))
    ok &= close
    online = lira.variant("online")
    print(
        f"lira memloc        {fast_lira:7.2f} s  peak {fast_lmem:7.1f} MiB  "
        f"(online AUC {online.auc:.3f}, TPR@0.1% {100 * online.tpr_at_0_1pct:.1f}%)"
    )
    print(
        f"lira baseline      {slow_lira:7.2f} s  (loop over {n} examples: {loop_s:.2f} s, scaled to "
        f"{args.examples}; peak {loop_mem:.1f} MiB)  scores equal: {close}"
    )
    print(f"influence: {slow_infl / fast_infl:.1f}x")
    print(f"lira: {slow_lira / fast_lira:.1f}x")
    if not ok:
        print("memloc and the baseline disagree", file=sys.stderr)
        return 1
    print(f"ensemble_measures: {(slow_infl + slow_lira) / (fast_infl + fast_lira):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
