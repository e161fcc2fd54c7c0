"""Seconds per ROME edit: memloc's compute_rome against a straightforward implementation.

Both run the same algorithm (edit/rome.py; the same rewrite prompts, loss, Adam loop and
rank-one update) on the same facts in one process with one torch thread, after the key
statistics are cached. The straightforward version does what a direct transcription of
the paper does:

- every optimisation step runs the whole model over every rewrite prompt and computes
  full-vocabulary logits at every position (the δ is patched into the MLP output by a hook);
- the context templates are sampled again for every edit;
- C is inverted again for every edit (explicit inverse).

memloc's version reuses the templates, runs only the blocks above the edited layer on only
the tokens from the subject's last token on, and forms logits only where a loss needs them.

Both must give the same ES/PS/NS (CounterFact protocol: a prompt prefers the target whose
" "+target has the lower mean per-token NLL); the script exits non-zero if they differ.
The last line is ``rome: <ratio>x``.

Run: ``python benchmarks/rome.py [--facts F] [--n 5] [--layer 6]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from memloc.core.hooks import patch, trace
from memloc.core.lm.facts import Fact, load_facts
from memloc.core.lm.loading import load_language_model
from memloc.core.lm.model import LM, encode
from memloc.core.sites import Site
from memloc.edit.delta import LayerDelta, WeightDelta, apply, weights_hash
from memloc.edit.rome import RomeConfig, compute_rome
from memloc.edit.stats import StatsConfig, key_statistics
from memloc.edit.targets import optimize_delta, rewrite_batch
from memloc.edit.templates import context_templates, sample_templates

FACTS = Path(__file__).resolve().parent.parent / "fixtures" / "smollm2-counterfact.json"

# Used when the fixture file is not there yet: facts SmolLM2-135M answers correctly.
OWN_FACTS = (
    Fact(
        "eiffel",
        "{} is located in the city of",
        "The Eiffel Tower",
        "Paris",
        "London",
        paraphrases=("{} can be found in the city of", "Tourists who want to see {} travel to the city of"),
        neighborhood=(
            "The Louvre is located in the city of",
            "Notre-Dame de Paris is located in the city of",
            "The Arc de Triomphe is located in the city of",
        ),
    ),
    Fact(
        "colosseum",
        "{} is located in the city of",
        "The Colosseum",
        "Rome",
        "Paris",
        paraphrases=("{} can be found in the city of", "Tourists who want to see {} travel to the city of"),
        neighborhood=(
            "The Trevi Fountain is located in the city of",
            "The Pantheon is located in the city of",
        ),
    ),
    Fact(
        "japan",
        "The capital of {} is",
        "Japan",
        "Tokyo",
        "Berlin",
        paraphrases=("{}'s capital city is", "The capital city of {} is"),
        neighborhood=("The largest city of Japan is", "The biggest city in Japan is"),
    ),
)


# --- the straightforward implementation -------------------------------------------------------------


def full_pass_scorer(lm: LM, batch, site: Site):
    """δ patched into the MLP output by a hook; the whole model and full logits at every position."""
    rows = torch.arange(batch.ids.shape[0], device=batch.ids.device)

    def score(delta: torch.Tensor):
        def add(act: torch.Tensor) -> torch.Tensor:
            act = act.clone()
            act[rows, batch.subject_last] += delta
            return act

        with patch(lm.model, lm.adapter, {site: add}, detach=False):
            logits = lm.model(input_ids=batch.ids, attention_mask=batch.attention_mask).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        token_logp = logp[batch.target_rows, batch.target_pos].gather(1, batch.target_ids[:, None])[:, 0]
        return token_logp, logp[batch.kl_row, batch.subject_last[batch.kl_row]]

    return score


def straightforward_rome(lm: LM, fact: Fact, c: torch.Tensor, config: RomeConfig) -> WeightDelta:
    layer = config.layer
    model, adapter = lm.model, lm.adapter
    templates = sample_templates(lm, config.templates)  # sampled again for every edit
    batch = rewrite_batch(lm, fact, templates, config.target.kl_prompt)
    n = batch.n_rewrite
    rows = torch.arange(n, device=batch.ids.device)
    key_site, out_site = Site(layer, "mlp.post"), Site(layer, "mlp.out")
    with torch.no_grad(), trace(model, adapter, [key_site, out_site]) as seen:
        model(input_ids=batch.ids, attention_mask=batch.attention_mask)
    k_star = seen[key_site][rows, batch.subject_last[:n]].double().mean(0)
    v0 = seen[out_site][rows, batch.subject_last[:n]].mean(0)
    delta, *_ = optimize_delta(full_pass_scorer(lm, batch, out_site), v0, batch.n_target, config.target)
    c_inv = torch.linalg.inv(c.double())  # inverted again for every edit
    direction = c_inv @ k_star
    w = adapter.down_matrix(model, layer).detach().double()
    bias = adapter.down_bias(model, layer)
    residual = (v0 + delta).double() - w @ k_star - (0 if bias is None else bias.detach().double())
    lam = residual / torch.dot(direction, k_star)
    return WeightDelta("rome-straightforward", (LayerDelta(layer, lam[:, None], direction[:, None]),))


# --- CounterFact scores -------------------------------------------------------------------------------


@torch.no_grad()
def mean_nll(lm: LM, prompts: list[str], targets: list[str]) -> list[float]:
    """Mean per-token NLL of " "+target after each prompt, in one right-padded batch."""
    rows, spans = [], []
    for prompt, target in zip(prompts, targets, strict=True):
        enc = encode(lm.tokenizer, prompt, None, target)
        rows.append(list(enc.ids) + list(enc.target))
        spans.append((len(enc.ids), enc.target))
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    logp = torch.log_softmax(
        lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)).logits.float(), -1
    )
    out = []
    for i, (start, target) in enumerate(spans):
        out.append(-sum(logp[i, start - 1 + j, t].item() for j, t in enumerate(target)) / len(target))
    return out


def scores(lm: LM, fact: Fact) -> tuple[bool, list[bool], list[bool]]:
    """(ES, PS per paraphrase, NS per neighbourhood prompt) of one fact."""
    prompts = [fact.text, *fact.paraphrases, *fact.neighborhood]
    new = mean_nll(lm, prompts, [fact.target_new] * len(prompts))
    true = mean_nll(lm, prompts, [fact.target_true] * len(prompts))
    prefers_new = [a < b for a, b in zip(new, true, strict=True)]
    p = len(fact.paraphrases)
    return prefers_new[0], prefers_new[1 : 1 + p], [not x for x in prefers_new[1 + p :]]


def summary(outcomes: list[tuple[bool, list[bool], list[bool]]]) -> dict[str, float]:
    es = [o[0] for o in outcomes]
    ps = [x for o in outcomes for x in o[1]]
    ns = [x for o in outcomes for x in o[2]]
    return {name: sum(v) / max(len(v), 1) for name, v in (("ES", es), ("PS", ps), ("NS", ns))}


def run(lm: LM, facts: list[Fact], compute) -> tuple[list[float], list, list[WeightDelta]]:
    seconds, outcomes, deltas = [], [], []
    base = weights_hash(lm.model)
    for fact in facts:
        start = time.perf_counter()
        delta = compute(fact)
        seconds.append(time.perf_counter() - start)
        with apply(lm.model, lm.adapter, delta):
            outcomes.append(scores(lm, fact))
        deltas.append(delta)
        if weights_hash(lm.model) != base:
            sys.exit("the model was not restored after an edit")
    return seconds, outcomes, deltas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", default=str(FACTS) if FACTS.is_file() else "")
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--stats-samples", type=int, default=200)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    torch.set_num_threads(1)

    lm = load_language_model(args.model, device="cpu")
    facts = load_facts(args.facts)[: args.n] if args.facts else list(OWN_FACTS)[: args.n]
    config = RomeConfig(layer=args.layer)
    stats = key_statistics(lm, args.layer, StatsConfig(samples=args.stats_samples, generated_length=48))
    c = stats.matrix()
    templates = context_templates(lm, config.templates)  # cached on disk, outside the timed region
    print(
        f"model {args.model}, layer {args.layer}, {len(facts)} facts from {args.facts or 'the built-in list'}"
    )
    print(
        f"key statistics: {stats.count} tokens, condition {stats.condition:.3g}, shrinkage {stats.shrinkage:.3g}"
    )

    fast_s, fast_out, fast_d = run(lm, facts, lambda f: compute_rome(lm, f, c, config, templates))
    plain_s, plain_out, plain_d = run(lm, facts, lambda f: straightforward_rome(lm, f, c, config))

    for fact, a, b in zip(facts, fast_d, plain_d, strict=True):
        ua, ub = a.layers[0].dense(), b.layers[0].dense()
        rel = ((ua - ub).norm() / ub.norm()).item()
        info = a.info
        print(
            f"  {fact.case_id}: steps {info['steps']}, p_new {info['p_new_before']:.3f} -> {info['p_new_after']:.3f}, "
            f"|ΔW|/|W| {info['update_ratio']:.3g}, |ΔW_fast − ΔW_plain|/|ΔW_plain| {rel:.1e}"
        )
    fast_scores, plain_scores = summary(fast_out), summary(plain_out)
    print("memloc          ", " ".join(f"{k} {v:.2f}" for k, v in fast_scores.items()))
    print("straightforward ", " ".join(f"{k} {v:.2f}" for k, v in plain_scores.items()))
    fast, plain = statistics.mean(fast_s), statistics.mean(plain_s)
    print(f"seconds per edit: memloc {fast:.2f} (median {statistics.median(fast_s):.2f}), "
          f"straightforward {plain:.2f} (median {statistics.median(plain_s):.2f})")  # fmt: skip
    if fast_out != plain_out:
        sys.exit("ES/PS/NS differ between the two implementations")
    print(f"rome: {plain / fast:.1f}x")


if __name__ == "__main__":
    main()
