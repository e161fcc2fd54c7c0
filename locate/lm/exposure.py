"""Exposure of planted canaries (Carlini et al. 2019, "The Secret Sharer").

exposure = log2 |R| - log2 rank, where rank orders every candidate s[r'] of the
canary's space R by its log-perplexity Px = sum_i -log2 P(x_i | x_<i) over the canary's
tokens after the template's fixed start. The maximum, log2 |R|, means the secret is the
model's most likely candidate.

- Exact (|R| <= ``exact_limit``, 10^6 by default): every candidate is scored. The fixed
  text before the first slot is run once and its key/value cache shared by every row
  (`PrefixCache`); rows are the candidates' remaining tokens, right-padded (causal
  attention: padding after a token never changes it). Ties: rank = the number of
  candidates with a Px at most the secret's, so a secret tied with others takes the
  worst rank of the tie and exposure never overstates memorization (a model that
  cannot tell the candidates apart gets exposure 0). Canaries of one template share
  one scoring of R. The other canaries of the file are candidates of R too, and a
  trained model ranks them high, so a canary's rank can be held down by them alone:
  ``others_above`` counts them, and ``exposure_alone`` is the exposure the canary would
  have had without them (as if it were the only one planted).
- Estimated (``estimate=True``, needed above the limit): ``samples`` candidates drawn
  uniformly (seeded) are scored, a skew-normal is fitted to their Px (scipy.stats.skewnorm,
  maximum likelihood) and exposure ~= -log2 P(Px <= Px(secret)) under the fit, at most
  log2 |R| (the tail of the fit may put the secret beyond 1/|R|; rank 1 is the ceiling).

A candidate's tokens are those of the fixed start (cut at its last space, with the
tokenizer's document start) followed by those of the rest of its text, so every
candidate, the secret included, is tokenized the same way.

Usage::

    result = canary_exposure(lm, read_canaries(Path("planted.canaries.jsonl")), ExposureConfig())
    [(c.repeats, c.exposure) for c in result.canaries]
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from memloc.core.errors import DataError
from memloc.core.lm.canaries import Canary
from memloc.core.lm.canary_space import CanarySpace
from memloc.core.lm.decoding import pad_id
from memloc.core.lm.model import LM, added_prefix, document_start_id
from memloc.core.lm.prefix_runner import PrefixCache, cache_inputs, cache_of
from memloc.core.progress import Progress
from memloc.core.validation import at_least

EXACT_LIMIT = 10**6


@dataclass(frozen=True)
class ExposureConfig:
    batch_size: int = 256  # candidates per forward pass
    estimate: bool = False  # skew-normal estimate instead of scoring all of R
    samples: int = 10_000  # candidates scored for the estimate
    seed: int = 0
    exact_limit: int = EXACT_LIMIT
    shared_prefix: bool = True  # False scores every candidate in full (the benchmark's baseline)
    trie: bool = True  # exact scoring runs each distinct token prefix once (needs shared_prefix)

    def __post_init__(self) -> None:
        at_least(self, 1, "batch_size", "exact_limit")
        at_least(self, 0, "seed")
        at_least(self, 10, "samples")


@dataclass(frozen=True)
class CanaryExposure:
    text: str
    repeats: int
    space_size: int
    log_perplexity: float  # Px of the secret, in bits
    exposure: float
    rank: int | None  # exact rank (1 = most likely); None when estimated
    estimated: bool
    scored: int  # candidates scored
    others_above: int | None = None  # the file's other canaries counted in ``rank``; None when estimated

    @property
    def exposure_alone(self) -> float | None:
        """The exact exposure with the file's other canaries left out of R's ranking."""
        if self.rank is None or self.others_above is None:
            return None
        return exposure_from_rank(self.space_size, self.rank - self.others_above)


@dataclass(frozen=True)
class ExposureResult:
    canaries: tuple[CanaryExposure, ...]
    config: ExposureConfig
    model: str = ""

    def rows(self) -> list[dict]:
        return [
            {
                "canary": c.text,
                "repeats": c.repeats,
                "|R|": c.space_size,
                "log_perplexity": round(c.log_perplexity, 3),
                "rank": "estimated" if c.rank is None else c.rank,
                "canaries above": "-" if c.others_above is None else c.others_above,
                "exposure": round(c.exposure, 3),
                "alone": "-" if c.exposure_alone is None else round(c.exposure_alone, 3),
                "max": round(math.log2(c.space_size), 3),
            }
            for c in self.canaries
        ]


@dataclass(frozen=True)
class _Scorer:
    """Scores candidates of one template: the fixed start's tokens and, once, its cache."""

    lm: LM
    space: CanarySpace
    prefix_ids: tuple[int, ...]
    config: ExposureConfig

    @classmethod
    def build(cls, lm: LM, space: CanarySpace, config: ExposureConfig) -> _Scorer:
        head = space.fixed_prefix
        ids = tuple(lm.tokenizer(head)["input_ids"]) if head else added_prefix(lm.tokenizer)
        return cls(lm, space, ids or (document_start_id(lm.tokenizer),), config)

    def check_known(self, canary: Canary) -> None:
        """A secret the tokenizer reads as unknown tokens cannot be told from other candidates."""
        unk = self.lm.tokenizer.unk_token_id
        if unk is not None and unk in self.rest_ids([self.space.index(canary.secret)])[0]:
            raise DataError(
                f"the tokenizer maps part of the canary {canary.text!r} to its unknown token, so its "
                "candidates cannot be told apart; use a template whose slot values it knows"
            )

    def rest_ids(self, indices: Sequence[int]) -> list[list[int]]:
        cut = len(self.space.fixed_prefix)
        texts = [self.space.fill(self.space.values(i))[cut:] for i in indices]
        return self.lm.tokenizer(texts, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def score(self, indices: Sequence[int], progress: Progress | None = None) -> torch.Tensor:
        """Px in bits of each candidate, float64."""
        device, model = self.lm.device, self.lm.model
        prefix = torch.tensor([self.prefix_ids], device=device)
        cache, out = PrefixCache.run(model, input_ids=prefix) if self.config.shared_prefix else (None, None)
        first = out.logits[0, -1].float().log_softmax(-1) if out is not None else None
        scores = []
        for start in range(0, len(indices), self.config.batch_size):
            rows = self.rest_ids(indices[start : start + self.config.batch_size])
            scores.append(self._batch(rows, prefix, cache, first))
            if progress:
                progress(
                    min(start + self.config.batch_size, len(indices)), len(indices), "scoring candidates"
                )
        return torch.cat(scores)

    def _batch(self, rows, prefix: torch.Tensor, cache: PrefixCache | None, first) -> torch.Tensor:
        model, n = self.lm.model, len(rows)
        width = max(len(r) for r in rows)
        ids = torch.full((n, width), pad_id(self.lm.tokenizer), dtype=torch.long)
        valid = torch.zeros((n, width), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            valid[i, : len(row)] = True
        ids, valid = ids.to(prefix.device), valid.to(prefix.device)
        if cache is not None:
            logits = model(input_ids=ids, **cache_inputs(model, cache.fresh(rows=n))).logits[:, :-1]
            logp = torch.cat([first.expand(n, 1, -1), logits.float().log_softmax(-1)], dim=1)
        else:
            full = torch.cat([prefix.expand(n, -1), ids], dim=1)
            logp = model(input_ids=full).logits[:, prefix.shape[1] - 1 : -1].float().log_softmax(-1)
        token_logp = logp.gather(-1, ids[..., None])[..., 0].double()
        return -(token_logp * valid).sum(-1).cpu() / math.log(2)


@dataclass(frozen=True)
class _TrieLevel:
    """The distinct t-token prefixes (after the fixed start) of the candidates longer than t.

    ``nodes`` are sorted, so the children of a run of parents are a run of nodes; ``parent``
    is each node's index one level up (0, the fixed start, at t = 1); the candidates in
    ``members[bounds[i]:bounds[i + 1]]`` add the log-probability of their token t at node i.
    """

    nodes: np.ndarray  # (n, t) token ids
    parent: np.ndarray  # (n,)
    members: np.ndarray  # candidates, grouped by node
    bounds: np.ndarray  # members[bounds[i]:bounds[i + 1]] are node i's


def _trie_levels(grid: np.ndarray, lengths: np.ndarray) -> list[_TrieLevel]:
    levels: list[_TrieLevel] = []
    above: dict[tuple[int, ...], int] = {(): 0}
    for t in range(1, grid.shape[1]):
        alive = np.flatnonzero(lengths > t)
        if alive.size == 0:
            break
        nodes, inverse = np.unique(grid[alive, :t], axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        parent = np.array([above[tuple(row[:-1])] for row in nodes.tolist()], dtype=np.int64)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(nodes) + 1))
        levels.append(_TrieLevel(nodes, parent, alive[order], bounds))
        above = {tuple(row): i for i, row in enumerate(nodes.tolist())}
    return levels


@torch.no_grad()
def trie_scores(scorer: _Scorer, progress: Progress | None = None) -> torch.Tensor:
    """Px in bits of EVERY candidate of the space, each trie node run as one token on its parent's cache.

    Candidates of a dense space share their leading tokens ("my PIN is 1 2 _" for ten
    of them), and a token's probability depends only on the tokens before it. So the
    distinct token prefixes form a trie, walked depth first: a batch of nodes runs just
    its last token on a cache copied from its parents' rows, and each candidate adds
    the log-probability of its own next token at its prefix. For 6 digits that is
    111,110 one-token rows instead of 10^6 rows of 6 tokens, and memory holds one batch
    per depth; the scores equal `_Scorer.score`'s up to float rounding.
    """
    rows = scorer.rest_ids(range(scorer.space.size))
    lengths = np.array([len(r) for r in rows])
    grid = np.full((len(rows), int(lengths.max())), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        grid[i, : len(row)] = row
    device, model = scorer.lm.device, scorer.lm.model
    cache, out = PrefixCache.run(model, input_ids=torch.tensor([scorer.prefix_ids], device=device))
    first = out.logits[0, -1].double().log_softmax(-1).cpu().numpy()
    walk = _TrieWalk(scorer, grid, _trie_levels(grid, lengths), first[grid[:, 0]].copy(), progress)
    walk.expand(0, 0, 1, cache)
    return torch.from_numpy(-walk.total / math.log(2))


@dataclass
class _TrieWalk:
    scorer: _Scorer
    grid: np.ndarray
    levels: list[_TrieLevel]
    total: np.ndarray  # each candidate's log-probability so far, natural log
    progress: Progress | None
    done: int = 0

    @cached_property
    def nodes(self) -> int:
        """Trie nodes to run, the progress bar's end."""
        return sum(len(level.nodes) for level in self.levels)

    def expand(self, depth: int, lo: int, hi: int, cache: PrefixCache) -> None:
        """Score the children of nodes ``lo:hi`` at ``depth`` (``cache`` holds their rows), then theirs."""
        if depth == len(self.levels):
            return
        level, model = self.levels[depth], self.scorer.lm.model
        first, last = np.searchsorted(level.parent, [lo, hi])
        for start in range(int(first), int(last), self.scorer.config.batch_size):
            stop = min(start + self.scorer.config.batch_size, int(last))
            rows = torch.from_numpy(level.parent[start:stop] - lo)
            ids = torch.from_numpy(level.nodes[start:stop, -1:]).to(self.scorer.lm.device)
            step = cache.fresh(rows=dict.fromkeys(range(len(cache.kv)), rows))
            out = model(input_ids=ids, **cache_inputs(model, step))
            logp = out.logits[:, -1].double().log_softmax(-1).cpu().numpy()
            members = level.members[level.bounds[start] : level.bounds[stop]]
            node = np.repeat(np.arange(stop - start), np.diff(level.bounds[start : stop + 1]))
            self.total[members] += logp[node, self.grid[members, depth + 1]]
            self.done += stop - start
            if self.progress:
                self.progress(self.done, self.nodes, "scoring the prefix trie")
            self.expand(depth + 1, start, stop, PrefixCache.of(cache_of(out), cache.config))


def exposure_from_rank(size: int, rank: int) -> float:
    return math.log2(size) - math.log2(rank)


def _exact(scorer: _Scorer, canaries: list[Canary], progress) -> list[CanaryExposure]:
    size = scorer.space.size
    use_trie = scorer.config.trie and scorer.config.shared_prefix
    scores = trie_scores(scorer, progress) if use_trie else scorer.score(range(size), progress)
    secrets = {scorer.space.index(c.secret) for c in canaries}
    out = []
    for c in canaries:
        own = scorer.space.index(c.secret)
        px = float(scores[own])
        rank = int((scores <= px).sum())
        above = sum(1 for i in secrets if i != own and float(scores[i]) <= px)
        out.append(
            CanaryExposure(
                c.text, c.repeats, size, px, exposure_from_rank(size, rank), rank, False, size, above
            )
        )
    return out


def skewnorm_exposure(sample: torch.Tensor, px: float) -> float:
    """-log2 P(Px <= px) under a skew-normal fitted to the sampled log-perplexities."""
    from scipy.stats import skewnorm

    a, loc, scale = skewnorm.fit(sample.numpy())
    return max(0.0, -float(skewnorm.logcdf(px, a, loc, scale)) / math.log(2))


def _estimated(scorer: _Scorer, canaries: list[Canary], progress) -> list[CanaryExposure]:
    size, config = scorer.space.size, scorer.config
    rng = random.Random(config.seed)
    drawn = [rng.randrange(size) for _ in range(config.samples)]
    secrets = [scorer.space.index(c.secret) for c in canaries]
    scores = scorer.score(drawn + secrets, progress)
    sample = scores[: len(drawn)]
    # The fitted tail can put a secret beyond 1/|R|; no rank is better than 1, so log2 |R| is the ceiling.
    ceiling = math.log2(size)
    return [
        CanaryExposure(
            c.text,
            c.repeats,
            size,
            float(px),
            min(ceiling, skewnorm_exposure(sample, float(px))),
            None,
            True,
            len(drawn),
        )
        for c, px in zip(canaries, scores[len(drawn) :], strict=True)
    ]


def check_space(canaries: Sequence[Canary], config: ExposureConfig) -> None:
    """Refuse, before any work, a space too large to enumerate without ``estimate``."""
    for template in {c.template for c in canaries}:
        size = CanarySpace.parse(template).size
        if size > config.exact_limit and not config.estimate:
            raise DataError(
                f"|R| = {size:.3g} candidates of {template!r} are more than the {config.exact_limit:.0e} "
                "scored exactly; estimate the exposure instead (--estimate, estimate=True)"
            )


def canary_exposure(
    lm: LM, canaries: Sequence[Canary], config: ExposureConfig, *, progress: Progress | None = None
) -> ExposureResult:
    """Exposure of every canary, exact or estimated; canaries of one template share their scoring."""
    check_space(canaries, config)
    by_template: dict[str, list[Canary]] = {}
    for c in canaries:
        by_template.setdefault(c.template, []).append(c)
    results: dict[int, CanaryExposure] = {}
    for template, group in by_template.items():
        scorer = _Scorer.build(lm, CanarySpace.parse(template), config)
        for c in group:
            scorer.check_known(c)
        method = _estimated if config.estimate else _exact
        for c, r in zip(group, method(scorer, group, progress), strict=True):
            results[id(c)] = r
    if not results:
        raise DataError("no canaries to measure")
    return ExposureResult(tuple(results[id(c)] for c in canaries), config, getattr(lm, "source", ""))
