"""CounterFact evaluation of edits (Meng et al. 2022, "Locating and Editing Factual
Associations in GPT", section 3 and appendix).

Each prompt is scored by the mean per-token NLL of " " + target, so P = exp(−NLL):

- ES: share of facts with P(new) > P(true) on the rewrite prompt; PS: the same over
  paraphrase prompts; NS: share of neighborhood prompts with P(true) > P(new).
- S: harmonic mean of ES, PS and NS.
- EM, PM: mean P(new) − P(true) on rewrite and paraphrase prompts; NM: mean
  P(true) − P(new) on neighborhood prompts.
- Accuracy variants (EA, PA, NA): every target token is the teacher-forced argmax
  (new target on rewrite and paraphrase prompts, true target on neighbors).
- Fluency: the weighted bi- and tri-gram entropy of generations (weights 2/3 and
  4/3, as in the paper), over greedy continuations of the generation prompts.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from memloc.core.errors import MemlocError
from memloc.core.lm.facts import Fact, neighborhood_rule
from memloc.core.lm.model import LM, final_hidden
from memloc.core.progress import Progress, within
from memloc.core.validation import at_least
from memloc.edit.delta import Applied, Editor, IndependentEditor, WeightDelta, apply
from memloc.edit.probe_result import LayerProbe
from memloc.edit.sequential import CurvePoint, SequentialConfig

METRICS = ("ES", "PS", "NS", "S", "EM", "PM", "NM", "EA", "PA", "NA", "fluency")
# One line per metric, for the terminal and the report.
METRIC_MEANINGS = {
    "ES": "efficacy: share of facts whose rewrite prompt gives P(new) > P(true)",
    "PS": "generalization: the same share over paraphrase prompts",
    "NS": "specificity: share of neighborhood prompts that keep P(true) > P(new)",
    "S": "harmonic mean of ES, PS and NS",
    "EM": "mean P(new) - P(true) on rewrite prompts",
    "PM": "mean P(new) - P(true) on paraphrase prompts",
    "NM": "mean P(true) - P(new) on neighborhood prompts",
    "EA": "share of rewrite prompts where every token of the new target is the argmax",
    "PA": "the same share over paraphrase prompts",
    "NA": "share of neighborhood prompts where every token of the true target is the argmax",
    "fluency": "weighted bi/tri-gram entropy of greedy generations (higher: less repetitive)",
}


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 32
    generation_tokens: int = 100
    generation_prompts: int = 1  # per fact
    fluency: bool = True

    def __post_init__(self) -> None:
        at_least(self, 1, "batch_size", "generation_tokens", "generation_prompts")


@dataclass(frozen=True)
class PromptScore:
    nll: float  # mean per-token NLL of the target
    argmax: bool  # every target token is the teacher-forced argmax


@dataclass
class FactScores:
    """Scores of one fact's prompts, for its true and its new target."""

    case_id: str
    rewrite: tuple[PromptScore, PromptScore]  # (true, new)
    paraphrases: list[tuple[PromptScore, PromptScore]]
    neighborhood: list[tuple[PromptScore, PromptScore]]
    fluency: float | None = None


def score_targets(
    lm: LM,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> list[PromptScore]:
    """Teacher-forced scores of ``" " + target`` after each prompt, batched with right padding.

    ``progress(prompts done, prompts, "scoring prompts")`` after each batch.
    """
    tok = lm.tokenizer
    rows = []
    for prompt, target in zip(prompts, targets, strict=True):
        p = tok(prompt)["input_ids"]
        t = tok(" " + target.strip(), add_special_tokens=False)["input_ids"]
        rows.append((p, t))
    out: list[PromptScore] = []
    pad = tok.pad_token_id
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(p) + len(t) for p, t in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (p, t) in enumerate(chunk):
            ids[i, : len(p) + len(t)] = torch.tensor(p + t)
            mask[i, : len(p) + len(t)] = 1
        # The token at position j is predicted by the logits at j − 1; only those rows of
        # the vocabulary projection are formed, not (rows, tokens, vocab).
        row = torch.cat([torch.full((len(t),), i) for i, (_, t) in enumerate(chunk)])
        col = torch.cat([torch.arange(len(p) - 1, len(p) + len(t) - 1) for p, t in chunk])
        wanted = torch.cat([torch.tensor(t) for _, t in chunk])
        with torch.no_grad():
            hidden = final_hidden(lm, ids.to(lm.device), mask.to(lm.device))
            logits = lm.model.get_output_embeddings()(hidden[row.to(hidden.device), col.to(hidden.device)])
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        picked = logp[torch.arange(len(wanted)), wanted]
        hits = logp.argmax(-1) == wanted
        start_at = 0
        for _, t in chunk:
            end = start_at + len(t)
            out.append(PromptScore(float(-picked[start_at:end].mean()), bool(hits[start_at:end].all())))
            start_at = end
        if progress is not None:
            progress(len(out), len(rows), "scoring prompts")
    return out


def score_facts(
    lm: LM, facts: Sequence[Fact], config: EvalConfig, progress: Progress | None = None
) -> list[FactScores]:
    prompts, targets, owners = [], [], []
    for n, fact in enumerate(facts):
        groups = [
            ("rewrite", [fact.text]),
            ("paraphrases", list(fact.paraphrases)),
            ("neighborhood", list(fact.neighborhood)),
        ]
        for group, texts in groups:
            for j, text in enumerate(texts):
                # A neighbour keeps its own answer when the file gives one (zsRE-style locality).
                true = fact.neighbor_target(j) if group == "neighborhood" else fact.target_true
                for which, target in (("true", true), ("new", fact.target_new)):
                    prompts.append(text)
                    targets.append(target)
                    owners.append((n, group, j, which))
    scores = score_targets(lm, prompts, targets, batch_size=config.batch_size, progress=progress)
    table: dict[tuple, PromptScore] = dict(zip(owners, scores, strict=True))
    result = []
    for n, fact in enumerate(facts):

        def pair(group: str, j: int, n: int = n) -> tuple[PromptScore, PromptScore]:
            return table[(n, group, j, "true")], table[(n, group, j, "new")]

        result.append(
            FactScores(
                fact.case_id,
                pair("rewrite", 0),
                [pair("paraphrases", j) for j in range(len(fact.paraphrases))],
                [pair("neighborhood", j) for j in range(len(fact.neighborhood))],
            )
        )
    return result


def _p(score: PromptScore) -> float:
    return math.exp(-score.nll)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(scores: Sequence[FactScores]) -> dict[str, float | None]:
    """ES, PS, NS, S, EM, PM, NM, EA, PA, NA and the mean fluency over facts."""
    rewrite = [f.rewrite for f in scores]
    para = [pair for f in scores for pair in f.paraphrases]
    neigh = [pair for f in scores for pair in f.neighborhood]
    es = _mean([float(_p(new) > _p(true)) for true, new in rewrite])
    ps = _mean([float(_p(new) > _p(true)) for true, new in para])
    ns = _mean([float(_p(true) > _p(new)) for true, new in neigh])
    parts = [x for x in (es, ps, ns) if x is not None]
    s = len(parts) / sum(1 / x for x in parts) if parts and all(x > 0 for x in parts) else 0.0
    fluency = [f.fluency for f in scores if f.fluency is not None]
    return {
        "ES": es,
        "PS": ps,
        "NS": ns,
        "S": s,
        "EM": _mean([_p(new) - _p(true) for true, new in rewrite]),
        "PM": _mean([_p(new) - _p(true) for true, new in para]),
        "NM": _mean([_p(true) - _p(new) for true, new in neigh]),
        "EA": _mean([float(new.argmax) for _, new in rewrite]),
        "PA": _mean([float(new.argmax) for _, new in para]),
        "NA": _mean([float(true.argmax) for true, _ in neigh]),
        "fluency": _mean(fluency),
    }


def ngram_entropy(
    tokens: Sequence[str], ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)
) -> float:
    """Weighted mean of the n-gram entropies (bits) of one text's tokens."""
    entropies = []
    for n in ns:
        grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        total = sum(grams.values())
        freqs = np.array(list(grams.values()), dtype=float) / max(total, 1)
        entropies.append(float(-(freqs * np.log2(freqs)).sum()) if total else 0.0)
    return float(np.mean(np.array(entropies) * np.array(weights)))


def generate(lm: LM, prompts: Sequence[str], tokens: int, *, progress: Progress | None = None) -> list[str]:
    """Greedy continuations (deterministic, so fluency reproduces), left-padded and batched.

    ``progress(tokens done, tokens, "tokens")`` follows the generated tokens.
    """
    tok = lm.tokenizer
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(list(prompts), return_tensors="pt", padding=True).to(lm.device)
    finally:
        tok.padding_side = side
    with torch.no_grad(), warnings.catch_warnings():
        # transformers' own generate() still passes the renamed past_key_values keyword.
        warnings.filterwarnings("ignore", message=".*past_key_values.*")
        out = lm.model.generate(  # type: ignore[operator]  # transformers types generate loosely
            **enc, max_new_tokens=tokens, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=None,
            **_progress_criteria(progress, tokens),
        )  # fmt: skip
    return tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def _progress_criteria(progress: Progress | None, tokens: int) -> dict:
    """generate() arguments that report each new token; a criterion that never stops, so the text is unchanged."""
    if progress is None:
        return {}
    from transformers import StoppingCriteria, StoppingCriteriaList

    report = progress

    class _Report(StoppingCriteria):
        def __init__(self) -> None:
            self.done = 0

        def __call__(self, input_ids: torch.Tensor, scores: object, **kwargs: object) -> torch.Tensor:
            self.done += 1
            report(self.done, tokens, "tokens")
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return {"stopping_criteria": StoppingCriteriaList([_Report()])}


def fluencies(
    lm: LM, facts: Sequence[Fact], config: EvalConfig, progress: Progress | None = None
) -> list[float]:
    """Each fact's mean n-gram entropy of greedy continuations of its generation prompts.

    The prompts of all facts are generated ``config.batch_size`` at a time (left-padded),
    not one fact per `generate` call; ``progress(prompts done, prompts, "fluency")``.
    """
    prompts, owners = [], []
    for n, fact in enumerate(facts):
        chosen = list(fact.generation_prompts[: config.generation_prompts]) or [fact.text]
        prompts.extend(chosen)
        owners.extend([n] * len(chosen))
    entropies: list[float] = []
    for start in range(0, len(prompts), config.batch_size):
        texts = generate(lm, prompts[start : start + config.batch_size], config.generation_tokens)
        entropies.extend(ngram_entropy(text.split()) for text in texts)
        if progress is not None:
            progress(len(entropies), len(prompts), "fluency")
    per_fact: list[list[float]] = [[] for _ in facts]
    for n, value in zip(owners, entropies, strict=True):
        per_fact[n].append(value)
    return [float(np.mean(values)) for values in per_fact]


def measure(
    lm: LM, facts: Sequence[Fact], config: EvalConfig, progress: Progress | None = None
) -> list[FactScores]:
    """Scores and (optionally) fluency of every fact on the model as it is now.

    ``progress`` follows the scored prompts, then the fluency prompts.
    """
    scores = score_facts(lm, facts, config, progress)
    if config.fluency:
        for score, value in zip(scores, fluencies(lm, facts, config, progress), strict=True):
            score.fluency = value
    return scores


MODES = ("single", "batch", "sequential")


@dataclass(frozen=True)
class FactRow:
    """One fact's rewrite-prompt probabilities (and fluency) before and after editing."""

    case_id: str
    p_true_pre: float
    p_new_pre: float
    p_true_post: float
    p_new_post: float
    fluency_pre: float | None = None
    fluency_post: float | None = None

    @classmethod
    def of(cls, pre: FactScores, post: FactScores) -> FactRow:
        (true0, new0), (true1, new1) = pre.rewrite, post.rewrite
        return cls(pre.case_id, _p(true0), _p(new0), _p(true1), _p(new1), pre.fluency, post.fluency)


@dataclass(frozen=True)
class EvalResult:
    """CounterFact scores before and after editing; JSON only where stored (`to_dict`)."""

    mode: str  # single, batch, sequential, or edited-folder
    facts: int
    pre: Mapping[str, float | None]
    post: Mapping[str, float | None]
    seconds_per_edit: float
    per_fact: tuple[FactRow, ...]
    unedited: tuple[str, ...] = ()  # facts the method found nothing to edit in (scored as they are)
    config: Mapping | None = None
    method: str | None = None
    layers: tuple[int, ...] | None = None
    neighborhood_rule: str = "counterfact"  # a key of core.lm.facts.NEIGHBOR_RULES
    curve: tuple[CurvePoint, ...] = ()  # sequential mode: scores as the edits pile up
    protocol: str = ""  # sequential mode: SequentialConfig.describe()
    batch_size: int | None = None  # sequential mode: facts per edit
    layer_probe: LayerProbe | None = None  # --layers auto: the edit probe that chose the layers

    def to_dict(self) -> dict:
        rows = [asdict(row) for row in self.per_fact]
        if self.mode == FOLDER_MODE:
            # The edited-folder record has always been the shorter one; kept as it was.
            rows = [{k: v for k, v in row.items() if not k.startswith("fluency")} for row in rows]
            head = {"mode": self.mode, "method": self.method, "facts": self.facts}
            return {
                **head,
                "pre": dict(self.pre),
                "post": dict(self.post),
                "seconds_per_edit": 0.0,
                "per_fact": rows,
            }
        record = {
            "mode": self.mode,
            "facts": self.facts,
            "pre": dict(self.pre),
            "post": dict(self.post),
            "seconds_per_edit": self.seconds_per_edit,
            "unedited": list(self.unedited),
            "per_fact": rows,
            "config": dict(self.config or {}),
            "neighborhood_rule": self.neighborhood_rule,
        }
        if self.curve:
            record.update(
                curve=[asdict(point) for point in self.curve],
                protocol=self.protocol,
                batch_size=self.batch_size,
            )
        if self.method is not None:
            record.update(method=self.method, layers=list(self.layers or ()))
        if self.layer_probe is not None:
            record.update(layer_probe=self.layer_probe.to_dict())
        return record

    @classmethod
    def from_dict(cls, data: Mapping) -> EvalResult:
        """The result `to_dict` stored (e.g. in eval_report.json)."""
        rows = tuple(FactRow(**row) for row in data["per_fact"])
        layers = data.get("layers")
        return cls(
            data["mode"],
            data["facts"],
            data["pre"],
            data["post"],
            data["seconds_per_edit"],
            rows,
            tuple(data.get("unedited", ())),
            data.get("config"),
            data.get("method"),
            None if layers is None else tuple(layers),
            data.get("neighborhood_rule", "counterfact"),
            tuple(CurvePoint(**point) for point in data.get("curve", ())),
            data.get("protocol", ""),
            data.get("batch_size"),
            None if data.get("layer_probe") is None else LayerProbe.from_dict(data["layer_probe"]),
        )


FOLDER_MODE = "edited-folder"


def evaluate_edits(
    lm: LM,
    facts: Sequence[Fact],
    editor: Editor,
    mode: str,
    config: EvalConfig,
    *,
    sequential: SequentialConfig = SequentialConfig(),
    independent: IndependentEditor | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """Measure, edit in ``mode``, measure again; the model is restored at the end.

    - ``single``: edit one fact, measure it, restore, next fact. With ``independent``
      (`edit.editors.independent_editor`) every fact's delta is computed up front in one
      call, as if alone (ROME batches the target optimisations), and then applied alone.
    - ``batch``: one edit of all facts, then measure all.
    - ``sequential``: edit the facts in batches of ``sequential.batch_size``, one
      after another without restoring, measuring as they pile up (edit/sequential.py);
      ``post`` is measured after the last batch on every fact.

    ``seconds_per_edit`` counts computing and applying the edits, not measuring.

    Example::

        result = evaluate_edits(lm, facts, editor, "single", EvalConfig(fluency=False))
        result.post["ES"]
    """
    if mode not in MODES:
        raise MemlocError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    run = _EvalRun(lm, editor, config, len(facts) + 2, progress)
    pre = measure(lm, facts, config, within(progress, 0, run.total, "measuring before the edits"))
    run.step()
    curve: list[CurvePoint] = []
    try:
        if mode == "batch":
            post = _edit_batch(run, facts)
        elif mode == "sequential":
            post, curve = _edit_sequential(run, facts, sequential)
        else:
            post = _edit_single(run, facts, independent)
    finally:
        for handle in reversed(run.handles):
            handle.restore()
    run.step()
    rows = tuple(FactRow.of(a, b) for a, b in zip(pre, post, strict=True))
    return EvalResult(
        mode,
        len(facts),
        summarize(pre),
        summarize(post),
        run.edit_seconds / max(len(facts), 1),
        rows,
        tuple(run.unedited),
        asdict(config),
        neighborhood_rule=neighborhood_rule(facts),
        curve=tuple(curve),
        protocol=sequential.describe() if mode == "sequential" else "",
        batch_size=sequential.batch_size if mode == "sequential" else None,
    )


@dataclass
class _EvalRun:
    """One evaluation's editing state: progress, the edits in place, timing, facts left unedited."""

    lm: LM
    editor: Editor
    config: EvalConfig
    total: int
    progress: Progress | None
    done: int = 0
    edit_seconds: float = 0.0
    handles: list[Applied] = field(default_factory=list)  # edits kept in place until the end
    unedited: list[str] = field(default_factory=list)

    def step(self, units: int = 1) -> None:
        self.done += units
        if self.progress is not None:
            self.progress(self.done, self.total, "editing")

    def edit(self, chosen: Sequence[Fact], delta: WeightDelta | None = None) -> Applied:
        """Compute (unless given) and apply the edit of ``chosen``, timing both."""
        start = time.perf_counter()
        delta = self.editor(chosen) if delta is None else delta
        self.unedited.extend(delta.unedited_cases())
        handle = apply(self.lm.model, self.lm.adapter, delta)
        self.edit_seconds += time.perf_counter() - start
        return handle

    def measure(self, facts: Sequence[Fact], what: str) -> list[FactScores]:
        return measure(self.lm, facts, self.config, within(self.progress, self.done, self.total, what))


def _edit_batch(run: _EvalRun, facts: Sequence[Fact]) -> list[FactScores]:
    run.handles.append(run.edit(facts))
    run.step(len(facts))
    return run.measure(facts, "measuring after the edit")


def _edit_sequential(
    run: _EvalRun, facts: Sequence[Fact], sequential: SequentialConfig
) -> tuple[list[FactScores], list[CurvePoint]]:
    marks = set(sequential.checkpoints(len(facts)))
    post: list[FactScores] = []
    curve: list[CurvePoint] = []
    for start_at in range(0, len(facts), sequential.batch_size):
        chunk = facts[start_at : start_at + sequential.batch_size]
        run.handles.append(run.edit(chunk))
        run.step(len(chunk))
        edited = start_at + len(chunk)
        if edited in marks:
            post = run.measure(facts[:edited], f"measuring after {edited} edits")
            curve.append(_curve_point(edited, post, sequential.retention_facts))
    return post, curve


def _edit_single(
    run: _EvalRun, facts: Sequence[Fact], independent: IndependentEditor | None
) -> list[FactScores]:
    start = time.perf_counter()
    ready = independent(facts) if independent is not None else None
    run.edit_seconds += time.perf_counter() - start
    if ready is not None and len(ready) != len(facts):
        raise MemlocError(
            f"the editor gave {len(ready)} deltas for {len(facts)} facts; it must give one per fact"
        )
    post: list[FactScores] = []
    for i, fact in enumerate(facts):
        handle = run.edit([fact], None if ready is None else ready[i])
        try:
            post.extend(measure(run.lm, [fact], run.config))
        finally:
            handle.restore()
        run.step()
    return post


def _curve_point(edits: int, scores: list[FactScores], retention_facts: int) -> CurvePoint:
    every, first = summarize(scores), summarize(scores[:retention_facts])
    return CurvePoint(edits, every["ES"], every["PS"], every["NS"], every["fluency"], first["ES"])
