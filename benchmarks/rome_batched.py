"""Seconds per ROME edit in single mode: batched independent targets against one fact at a time.

In ``single`` mode every fact is edited alone on the unedited model, so the facts' v*
optimisations are independent. `compute_rome_batch` runs them as rows of one batch
(``RomeConfig.target_batch`` facts; edit/targets.optimize_targets_batched) and then
solves each fact's rank-one update alone; today's path calls `compute_rome` once per
fact. Both run in one process with one torch thread, after the key statistics and the
context templates are cached, on SmolLM2-135M by default.

The deltas must agree to float tolerance and each fact's edit must give the same ES/PS/NS
(benchmarks/rome.py's CounterFact scorer); the script exits non-zero otherwise. The last
line is ``rome_batched: <ratio>x``: one-at-a-time over batched CPU seconds per edit (one
thread, so CPU time is the work done even on a shared machine).

Why it is not faster on one thread (SmolLM2-135M, layer 6, 16 facts: 0.9x; 0.8x before the
clean pass ran the base model instead of forming (rows, tokens, vocab) logits): the work is
matrix products whose size is set by each fact's own tokens (its 21 rewrite prompts'
suffixes, ~150 tokens), and one core already runs those near its peak (a 150-row product
with the MLP's weights reaches 80 GFLOP/s, a 2,400-row one 93), so batching saves at most
~15% of the products, while padding every fact's rows to the batch's longest prompt
costs more: the clean pass ~4.0 s per fact batched against 2.8 s alone (with the logits), a step ~1.17 s
per fact against 1.05 s (``--batch 4``, facts of like lengths together, pads less: 0.94x).
Batching pays where one fact leaves the hardware idle: many threads or a GPU.

Run: ``python benchmarks/rome_batched.py [--facts F] [--n 16] [--layer 6] [--batch 16]``
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from memloc.core.lm.facts import load_facts
from memloc.core.lm.loading import load_language_model
from memloc.edit.delta import WeightDelta, apply
from memloc.edit.rome import RomeConfig, compute_rome, compute_rome_batch
from memloc.edit.stats import StatsConfig, key_statistics
from memloc.edit.templates import context_templates
from rome import FACTS, OWN_FACTS, scores, summary

TOLERANCE = 1e-3  # largest relative Frobenius difference allowed between a batched and a lone ΔW


def relative_difference(a: WeightDelta, b: WeightDelta) -> float:
    ua, ub = a.layers[0].dense(), b.layers[0].dense()
    return ((ua - ub).norm() / ub.norm()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", default=str(FACTS) if FACTS.is_file() else "")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16, help="facts per batch (RomeConfig.target_batch)")
    parser.add_argument("--stats-samples", type=int, default=200)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    torch.set_num_threads(1)

    lm = load_language_model(args.model, device="cpu")
    facts = load_facts(args.facts)[: args.n] if args.facts else list(OWN_FACTS)[: args.n]
    config = RomeConfig(layer=args.layer, target_batch=args.batch)
    stats = key_statistics(lm, args.layer, StatsConfig(samples=args.stats_samples, generated_length=48))
    c = stats.matrix()
    templates = context_templates(lm, config.templates)  # cached on disk, outside the timed region
    print(f"model {args.model}, layer {args.layer}, {len(facts)} facts, {args.batch} per batch, "
          f"{len(templates)} templates, torch threads {torch.get_num_threads()}")  # fmt: skip

    # CPU seconds of this process: with one thread they are the work done, whatever else the
    # machine runs; wall seconds are printed beside them.
    wall, cpu = time.perf_counter(), time.process_time()
    alone = [compute_rome(lm, fact, c, config, templates) for fact in facts]
    alone_wall, alone_s = (time.perf_counter() - wall) / len(facts), (time.process_time() - cpu) / len(facts)
    wall, cpu = time.perf_counter(), time.process_time()
    batched = compute_rome_batch(lm, facts, c, config, templates)
    batched_wall, batched_s = (
        (time.perf_counter() - wall) / len(facts),
        (time.process_time() - cpu) / len(facts),
    )

    worst = 0.0
    outcomes: tuple[list, list] = ([], [])
    for fact, a, b in zip(facts, alone, batched, strict=True):
        rel = relative_difference(b, a)
        worst = max(worst, rel)
        for out, delta in zip(outcomes, (a, b), strict=True):
            with apply(lm.model, lm.adapter, delta):
                out.append(scores(lm, fact))
        print(f"  {fact.case_id}: steps {a.info['steps']} / {b.info['steps']}, "
              f"p_new {a.info['p_new_after']:.3f} / {b.info['p_new_after']:.3f}, |ΔW_b − ΔW_1|/|ΔW_1| {rel:.1e}")  # fmt: skip
    one, many = (summary(out) for out in outcomes)
    print("one at a time ", " ".join(f"{k} {v:.2f}" for k, v in one.items()))
    print("batched       ", " ".join(f"{k} {v:.2f}" for k, v in many.items()))
    steps = [d.info["steps"] for d in alone]
    print(f"Adam steps per fact: mean {sum(steps) / len(steps):.1f}, max {max(steps)} of {config.target.steps} "
          "(a fact that stops early leaves the batch)")  # fmt: skip
    print(f"CPU seconds per edit: one at a time {alone_s:.2f}, batched {batched_s:.2f} "
          f"(wall {alone_wall:.2f}, {batched_wall:.2f})")  # fmt: skip
    if worst > TOLERANCE:
        sys.exit(f"a batched delta differs from its one-at-a-time delta by {worst:.1e} (> {TOLERANCE:g})")
    if outcomes[0] != outcomes[1]:
        sys.exit("ES/PS/NS differ between batched and one-at-a-time edits")
    print(f"rome_batched: {alone_s / batched_s:.1f}x")


if __name__ == "__main__":
    main()
