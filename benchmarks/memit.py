"""MEMIT with 1,000 edits in one call on the fixture LM, against a straightforward version.

    python benchmarks/memit.py [--edits 1000] [--subset 100]

Edit requests: the fixture's facts (fixtures/fixture-facts.json, 288), then 576
requests that ask a relation of a subject of another kind ("The capital of <a person>
is"), with target_true = the model's current top object of that relation and
target_new another object of it, then the facts' first paraphrases as requests of
their own with the fact's target_new, up to ``--edits`` (subject, prompt) requests
without contradictions. Key
statistics C come from the fixture prompts and are built before timing (they are
cached in real use). The edit config is the one the tests use for the fixture LM
(layer 0, clamp 4, λ = 1, bare prompts): the fixture reads its facts early.

Each side runs in its own process (one torch thread), so each peak RSS is its own:

- memloc: `compute_memit` — z optimised 64 facts at a time, keys read 128 prompts per
  pass, Cholesky solves.
- baseline, the same algorithm done plainly: z optimised one fact at a time
  (`edit/targets.optimize_target`), keys and states read one prompt per forward pass,
  and ΔW = R Kᵀ (λC + KKᵀ)⁻¹ with an explicit inverse. Its per-fact z optimisation runs
  on the first ``--subset`` requests only and its time is extrapolated linearly to all
  of them (stated in the output); the rest of the baseline runs on every request, using
  memloc's z so that both edits can be compared request by request.

Agreement (exit 1 otherwise): the baseline's z on the subset match memloc's (max
|Δδ| ≤ 1e-3 · max |δ|), and the two edits flip the same requests except at most 1%.
The last line is ``memit: <baseline seconds per edit / memloc seconds per edit>x``.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from memloc.core.hooks import trace
from memloc.core.lm.facts import Fact, load_facts
from memloc.core.lm.loading import load_language_model
from memloc.core.lm.model import encode
from memloc.core.sites import Site
from memloc.edit.delta import LayerDelta, WeightDelta, apply
from memloc.edit.memit import MemitConfig, compute_memit, read_at_positions, subject_keys, subject_states
from memloc.edit.targets import TargetConfig, optimize_target

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_LM = ROOT / "fixtures" / "fixture-lm"
FIXTURE_FACTS = ROOT / "fixtures" / "fixture-facts.json"
CONFIG = MemitConfig(
    layers=(0,), mom2_weight=1.0, target=TargetConfig(clamp=4.0), batch_size=128, target_batch=64
)
TEMPLATES = ("{}",)


def top_object(lm, text: str, subject: str, objects: list[str]) -> str:
    enc = encode(lm.tokenizer, text, subject)
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([enc.ids])).logits[0, -1]
    ids = [encode(lm.tokenizer, text, subject, o).target[0] for o in objects]
    return objects[int(torch.argmax(logits[ids]))]


def edit_requests(lm, count: int) -> list[Fact]:
    facts = load_facts(str(FIXTURE_FACTS))
    relations: dict[str, tuple[str, set[str]]] = {}
    for fact in facts:
        prompt, objects = relations.setdefault(fact.relation_key, (fact.prompt, set()))
        objects.update({fact.target_true, fact.target_new})
    has = {(f.subject, f.relation_key) for f in facts}
    subjects = sorted({f.subject for f in facts})
    rng = random.Random(0)
    cross = []
    for relation, (prompt, objects) in sorted(relations.items()):
        options = sorted(objects)
        for subject in subjects:
            if (subject, relation) not in has:
                true = top_object(lm, prompt.replace("{}", subject), subject, options)
                new = rng.choice([o for o in options if o != true])
                cross.append(Fact(f"x{len(cross)}", prompt, subject, true, new, relation))
    rng.shuffle(cross)  # all relations among the first ones
    # A fact's paraphrase as a request of its own, with the fact's target_new: consistent.
    reworded = [
        Fact(
            f"p{f.case_id}",
            f.paraphrases[0].replace(f.subject, "{}", 1),
            f.subject,
            f.target_true,
            f.target_new,
        )
        for f in facts
        if f.paraphrases
    ]
    return (list(facts) + cross + reworded)[:count]


def second_moments(lm) -> dict[int, torch.Tensor]:
    texts = [p for fact in load_facts(str(FIXTURE_FACTS)) for p in fact.prompts()]
    out = {}
    for layer in CONFIG.layers:
        with trace(lm.model, lm.adapter, [Site(layer, "mlp.post")]) as seen, torch.no_grad():
            rows = []
            for text in texts:
                lm.model(input_ids=torch.tensor([lm.tokenizer(text)["input_ids"]]))
                rows.append(seen[Site(layer, "mlp.post")][0].double())
        keys = torch.cat(rows)
        c = keys.T @ keys / len(keys)
        out[layer] = c + 1e-3 * c.trace() / len(c) * torch.eye(len(c), dtype=torch.float64)
    return out


def flips(lm, facts: list[Fact]) -> list[bool]:
    """P(new) > P(true) on each rewrite prompt (first target tokens), batched."""
    prompts = []
    for fact in facts:
        enc = encode(lm.tokenizer, fact.text, fact.subject)
        prompts.append((enc.ids, len(enc.ids) - 1))
    # The last position's final hidden state, then the unembedding of the two targets.
    last = Site(lm.n_layers - 1, "resid.post")
    h = read_at_positions(lm, prompts, last, 256).float()
    with torch.no_grad():
        logits = lm.model.get_output_embeddings()(lm.adapter.final_norm(lm.model)(h))
    out = []
    for row, fact in zip(logits, facts, strict=True):
        new = encode(lm.tokenizer, fact.text, fact.subject, fact.target_new).target[0]
        true = encode(lm.tokenizer, fact.text, fact.subject, fact.target_true).target[0]
        out.append(bool(row[new] > row[true]))
    return out


def run_memloc(lm, facts, stats) -> dict:
    began = time.perf_counter()
    delta = compute_memit(lm, facts, stats, CONFIG, TEMPLATES)
    seconds = time.perf_counter() - began
    with apply(lm.model, lm.adapter, delta):
        flipped = flips(lm, facts)
    return {"seconds": seconds, "flips": flipped, "info_target_seconds": delta.info["target_seconds"]}


def plain_spread(lm, facts, z: torch.Tensor, stats) -> list[LayerDelta]:
    """The layer loop with one prompt per pass and an explicit inverse."""
    parts: list[LayerDelta] = []
    last = CONFIG.layers[-1]
    for step, layer in enumerate(CONFIG.layers):
        with apply(lm.model, lm.adapter, WeightDelta("memit", tuple(parts))):
            keys = subject_keys(lm, facts, layer, TEMPLATES, batch_size=1)
            states = subject_states(lm, facts, last, batch_size=1)
        residuals = (z - states) / (len(CONFIG.layers) - step)
        inverse = torch.linalg.inv(CONFIG.mom2_weight * stats[layer] + keys @ keys.T)
        parts.append(LayerDelta(layer, residuals, inverse @ keys))
    return parts


def run_baseline(lm, facts, stats, subset: int, z_memloc: torch.Tensor) -> dict:
    site = Site(CONFIG.layers[-1], "resid.post")
    began = time.perf_counter()
    deltas = [optimize_target(lm, f, site, CONFIG.target, TEMPLATES).delta for f in facts[:subset]]
    target_seconds = (time.perf_counter() - began) * len(facts) / subset
    began = time.perf_counter()
    start = subject_states(lm, facts, site.layer, batch_size=1)
    parts = plain_spread(lm, facts, z_memloc, stats)
    spread_seconds = time.perf_counter() - began
    with apply(lm.model, lm.adapter, WeightDelta("memit", tuple(parts))):
        flipped = flips(lm, facts)
    own_z = start[:, :subset] + torch.stack(deltas, 1).double()
    return {
        "seconds": target_seconds + spread_seconds,
        "target_seconds_extrapolated": target_seconds,
        "spread_seconds": spread_seconds,
        "flips": flipped,
        "z_subset": own_z.tolist(),
    }


def child(side: str, edits: int, subset: int) -> None:
    torch.set_num_threads(1)
    lm = load_language_model(str(FIXTURE_LM), device="cpu")
    lm.model.requires_grad_(False)
    facts = edit_requests(lm, edits)
    stats = second_moments(lm)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if side == "memloc":
        result = run_memloc(lm, facts, stats)
        # memloc's z, for the baseline's request-by-request comparison.
        delta_z = compute_z(lm, facts)
        result["z"] = delta_z.tolist()
    else:
        z = torch.tensor(json.loads(Path(sys.argv[-1]).read_text())["z"], dtype=torch.float64)
        result = run_baseline(lm, facts, stats, subset, z)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["rss_before_mb"] = base_rss / 1024
    result["edits"] = len(facts)
    print(json.dumps(result))


def compute_z(lm, facts) -> torch.Tensor:
    """Memloc's z (the batched optimisation), untimed, for the comparison."""
    from memloc.edit.memit import optimize_targets

    site = Site(CONFIG.layers[-1], "resid.post")
    start = subject_states(lm, facts, site.layer, CONFIG.batch_size)
    deltas, _ = optimize_targets(lm, facts, site, CONFIG.target, TEMPLATES, CONFIG.target_batch)
    return start + deltas.double().T


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=1000)
    parser.add_argument("--subset", type=int, default=100)
    parser.add_argument("--side", choices=["memloc", "baseline"])
    parser.add_argument("zfile", nargs="?")
    args = parser.parse_args()
    if args.side:
        child(args.side, args.edits, args.subset)
        return 0
    common = [sys.executable, __file__, "--edits", str(args.edits), "--subset", str(args.subset)]
    out = subprocess.run([*common, "--side", "memloc"], capture_output=True, text=True, check=True)
    memloc = json.loads(out.stdout.strip().splitlines()[-1])
    zfile = Path("/tmp") / f"memit-bench-z-{id(memloc)}.json"
    zfile.write_text(json.dumps({"z": memloc["z"]}))
    out = subprocess.run(
        [*common, "--side", "baseline", str(zfile)], capture_output=True, text=True, check=True
    )
    zfile.unlink()
    base = json.loads(out.stdout.strip().splitlines()[-1])

    n = memloc["edits"]
    z = torch.tensor(memloc["z"])[:, : args.subset]
    z_base = torch.tensor(base["z_subset"])
    z_gap = (z - z_base).abs().max().item() / (z_base.abs().max().item() or 1.0)
    disagree = sum(a != b for a, b in zip(memloc["flips"], base["flips"], strict=True))
    es, es_base = sum(memloc["flips"]) / n, sum(base["flips"]) / n
    print(
        f"edit requests: {n} (fixture facts, cross-kind requests, paraphrase requests), layers {list(CONFIG.layers)}"
    )
    print(
        f"memloc:   {memloc['seconds']:.1f} s ({memloc['seconds'] / n * 1000:.1f} ms/edit; "
        f"z {memloc['info_target_seconds']:.1f} s), peak RSS {memloc['peak_rss_mb']:.0f} MB, ES {es:.3f}"
    )
    print(
        f"baseline: {base['seconds']:.1f} s ({base['seconds'] / n * 1000:.1f} ms/edit; z one fact at a time "
        f"{base['target_seconds_extrapolated']:.1f} s extrapolated from {args.subset} facts, "
        f"keys/states one prompt per pass + explicit inverse {base['spread_seconds']:.1f} s), "
        f"peak RSS {base['peak_rss_mb']:.0f} MB, ES {es_base:.3f}"
    )
    print(f"agreement: z max rel gap {z_gap:.2e} on {args.subset} facts; flips differ on {disagree}/{n}")
    ok = z_gap <= 1e-3 and disagree <= 0.01 * n
    print(f"memit: {base['seconds'] / memloc['seconds']:.1f}x")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
