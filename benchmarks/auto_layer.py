"""``--layers auto`` (the edit probe) against every fixed candidate layer, ROME on SmolLM2-135M.

Every ``--stride``-th record of fixtures/smollm2-counterfact.json is edited in single
mode; the probe takes its facts from the other records (held out). Prints the probe's
per-layer scores, each fixed layer's ES/PS/NS on the edited facts, and as the last line
the chosen layer's ES and PS gaps to the best fixed layer (JSON).

Run: ``python benchmarks/auto_layer.py 2,4,6,8 [--samples 100] [--stride 8] [--probe-facts 1]``
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from memloc.core.lm.facts import load_facts
from memloc.core.lm.loading import load_language_model
from memloc.edit.editors import EditPlan, edit_probe, prepare_editor
from memloc.edit.evaluate import EvalConfig, evaluate_edits
from memloc.edit.probe_result import ProbeConfig
from memloc.edit.stats import StatsConfig

FACTS = Path(__file__).resolve().parent.parent / "fixtures" / "smollm2-counterfact.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", help="layers to compare, e.g. 2,4,6,8")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--probe-facts", type=int, default=1)
    args = parser.parse_args()
    candidates = tuple(int(x) for x in args.candidates.split(","))
    lm = load_language_model("smollm2-135m", device="cpu")
    facts = load_facts(FACTS)
    edited = facts[:: args.stride]
    probe_config = ProbeConfig(facts=args.probe_facts, candidates=candidates)
    plan = EditPlan("rome", stats=StatsConfig(samples=args.samples), probe=probe_config)
    start = time.time()
    probe = edit_probe(lm, edited, plan, pool=facts)
    print(f"probe: {time.time() - start:.0f} s, chose layer {probe.layer}", flush=True)
    for s in probe.scores:
        print(f"probe layer {s.layer}: ES {s.es:.2f} PS {s.ps or 0:.2f} NS {s.ns or 0:.2f}", flush=True)
    fixed = {}
    for layer in candidates:
        editor, _ = prepare_editor(lm, edited, replace(plan, layers=(layer,)))
        fixed[layer] = evaluate_edits(lm, edited, editor, "single", EvalConfig(fluency=False)).post
        post = fixed[layer]
        print(f"fixed layer {layer}: ES {post['ES']:.2f} PS {post['PS']:.2f} NS {post['NS']:.2f}", flush=True)
    chosen = fixed[probe.layer]
    best = {k: max(row[k] for row in fixed.values()) for k in ("ES", "PS")}
    gaps = {f"{k}_gap": best[k] - chosen[k] for k in best}
    print(json.dumps({"chosen": probe.layer, **{k: chosen[k] for k in ("ES", "PS", "NS")}, **gaps}))


if __name__ == "__main__":
    main()
