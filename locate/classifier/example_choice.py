"""Which training examples `locate neurons` searches, from its ``--examples`` text.

- ``noisy``, ``clean``, ``both``: ``n`` seeded examples of each named group (needs the
  run's noise mask).
- ``3,17,42``: these example ids (rows of the run's training set).
- ``top:SCORE[:K]`` / ``bottom:SCORE[:K]``: the K examples with the highest / lowest
  score (K defaults to ``n``), highest (lowest) first, ties broken by the smaller id.
  SCORE is any score of `locate scores`: ``csl`` (cumulative sample loss),
  ``forgetting``, ``learning_time``, computed here from the run's dynamics, or
  ``curvature``, read from the scores file `locate scores --curvature` wrote. Every
  score is oriented so that larger means more likely memorized, so ``top:csl:50``
  are the 50 likeliest memorized examples. A choice by score needs no noise mask,
  which makes it the way into runs whose mask is unknown.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from memloc.core.classifier.runs import RunFolder
from memloc.core.errors import MemlocError
from memloc.locate.classifier.scores import dynamics_scores, load_scores

SELECTIONS = ("noisy", "clean", "both")
DIRECTIONS = ("top", "bottom")
DYNAMICS_SCORES = ("csl", "forgetting", "learning_time")
SCORES = (*DYNAMICS_SCORES, "curvature")
USAGE = "noisy, clean, both, comma-separated example ids, or top:SCORE[:K] / bottom:SCORE[:K]"


@dataclass(frozen=True)
class GroupChoice:
    """``n`` seeded examples of the noisy group, the clean group, or each."""

    which: str


@dataclass(frozen=True)
class IdChoice:
    ids: tuple[int, ...]


@dataclass(frozen=True)
class ScoreChoice:
    """The ``k`` examples ranked first by ``score``, from the top or the bottom; ``k`` None: ``n``."""

    direction: str
    score: str
    k: int | None = None


ExampleChoice = GroupChoice | IdChoice | ScoreChoice


def parse_examples(text: str) -> ExampleChoice:
    """The choice ``text`` names, checked for form (ids are checked against the run later).

    parse_examples("top:csl:50")  # ScoreChoice("top", "csl", 50)
    """
    text = text.strip()
    if text in SELECTIONS:
        return GroupChoice(text)
    if ":" in text:
        return _parse_score(text)
    try:
        ids = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise MemlocError(f"examples must be {USAGE}, got {text!r}", field="examples") from None
    if not ids:
        raise MemlocError(f"examples must be {USAGE}, got {text!r}", field="examples")
    return IdChoice(tuple(dict.fromkeys(ids)))


def _parse_score(text: str) -> ScoreChoice:
    parts = [p.strip() for p in text.split(":")]
    if len(parts) not in (2, 3) or parts[0] not in DIRECTIONS:
        raise MemlocError(
            f"examples {text!r} is not a choice by score; write top:SCORE[:K] or bottom:SCORE[:K], "
            "e.g. top:csl:50",
            field="examples",
        )
    if parts[1] not in SCORES:
        raise MemlocError(
            f"examples {text!r} names the unknown score {parts[1]!r}; scores: {', '.join(SCORES)}",
            field="examples",
        )
    k = None
    if len(parts) == 3:
        if not parts[2].isdigit() or int(parts[2]) < 1:
            raise MemlocError(
                f"examples {text!r}: the count K must be a positive integer, got {parts[2]!r}",
                field="examples",
            )
        k = int(parts[2])
    return ScoreChoice(parts[0], parts[1], k)


def choose_examples(
    choice: ExampleChoice,
    mask: np.ndarray,
    n: int,
    seed: int,
    scores: Callable[[str], np.ndarray] | None = None,
) -> list[int]:
    """The example ids ``choice`` picks among ``len(mask)``; ``scores(name)`` gives a score per example.

    ids = choose_examples(parse_examples("top:csl:5"), mask, 100, 0, scores=lambda name: csl)
    """
    if isinstance(choice, IdChoice):
        bad = [i for i in choice.ids if not 0 <= i < len(mask)]
        if bad:
            raise MemlocError(f"example ids must be in 0..{len(mask) - 1}; out of range: {bad}")
        return list(choice.ids)
    if n < 1 and not (isinstance(choice, ScoreChoice) and choice.k is not None):
        raise MemlocError(f"n must be at least 1, got {n}", field="n")
    if isinstance(choice, ScoreChoice):
        if scores is None:
            raise MemlocError(f"choosing examples by {choice.score} needs the run's scores")
        values = np.asarray(scores(choice.score), dtype=np.float64)
        if values.shape != mask.shape:
            raise MemlocError(f"the {choice.score} scores cover {len(values)} examples, the run {len(mask)}")
        # lexsort sorts by its last key first: the score, then the id for ties.
        order = np.lexsort((np.arange(len(values)), -values if choice.direction == "top" else values))
        return order[: choice.k or n].tolist()
    rng = np.random.default_rng([seed, 0x4E45])
    picked = []
    for group in ("noisy", "clean"):
        if choice.which in (group, "both"):
            pool = np.flatnonzero(mask if group == "noisy" else ~mask)
            picked += sorted(rng.choice(pool, size=min(n, len(pool)), replace=False).tolist())
    return picked


def run_scores(run: RunFolder) -> Callable[[str], np.ndarray]:
    """``scores(name)`` for ``run``: dynamics scores computed afresh, curvature from `locate scores`."""

    def scores(name: str) -> np.ndarray:
        if name in DYNAMICS_SCORES:
            dynamics = run.load_dynamics()
            return dynamics_scores(dynamics.loss, dynamics.correct)[name]
        stored = load_scores(run)
        if stored is None or name not in stored.scores:
            raise MemlocError(
                f"{run.root} has no {name} scores yet; compute them first with "
                f"'memloc locate scores {run.root} --{name}'"
            )
        return stored.scores[name]

    return scores
