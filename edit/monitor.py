"""A collapse monitor for edits: refuse updates that are too large, roll back edits
that make generations degenerate.

Over-large rank-one updates ("disabling edits", Gupta et al. 2024) make a model
repeat itself. Two checks catch them: before applying, the relative size
||ΔW||_F / ||W||_F of each edited matrix; after applying, the n-gram entropy of a
few greedy generations from neutral prompts, compared with the unedited model's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from memloc.core.errors import MemlocError
from memloc.core.lm.model import LM
from memloc.core.progress import Progress, labelled
from memloc.core.validation import at_least, fail, positive
from memloc.edit.delta import Applied, WeightDelta, apply
from memloc.edit.evaluate import generate, ngram_entropy


class CollapseError(MemlocError):
    """An edit was refused or rolled back because it breaks the model."""


# A knowledge-neuron edit adds 8·||w_i|| to each chosen column by definition (Dai et
# al. 2022), so its relative norm says nothing about collapse; only entropy is checked.
# Unlearning scales whole columns by definition too (ablation removes them), so again
# only the entropy check applies.
DEFAULT_UPDATE_RATIO = {"rome": 0.5, "memit": 1.0, "alphaedit": 1.0, "kn": None, "unlearn": None}


@dataclass(frozen=True)
class MonitorConfig:
    max_update_ratio: float | None = 0.5  # ||ΔW||_F / ||W||_F per layer; None skips the check
    min_entropy_ratio: float = 0.6  # post / pre fluency on the neutral prompts
    prompts: tuple[str, ...] = ("The weather today is", "My favorite book is about", "In the morning, I")
    tokens: int = 40

    def __post_init__(self) -> None:
        positive(self, "max_update_ratio", "min_entropy_ratio")
        at_least(self, 1, "tokens")
        if not self.prompts:
            raise fail(self, "prompts", "is empty; give at least one neutral prompt")


@dataclass(frozen=True)
class MonitorCheck:
    """What the monitor measured for an edit it let through."""

    update_ratio: dict[int, float]  # ||ΔW||_F / ||W||_F per edited layer
    entropy_before: float
    entropy_after: float


def update_ratios(lm: LM, delta: WeightDelta) -> dict[int, float]:
    ratios = {}
    for part in delta.layers:
        weight = lm.adapter.down_matrix(lm.model, part.layer).double()
        ratios[part.layer] = float(
            torch.linalg.norm(part.dense().to(weight.device)) / torch.linalg.norm(weight)
        )
    return ratios


def generation_entropy(lm: LM, config: MonitorConfig, *, progress: Progress | None = None) -> float:
    """Mean n-gram entropy of greedy generations from the neutral prompts; ``progress`` follows the tokens."""
    texts = generate(lm, list(config.prompts), config.tokens, progress=progress)
    return float(np.mean([ngram_entropy(t.split()) for t in texts]))


def checked_apply(
    lm: LM,
    delta: WeightDelta,
    config: MonitorConfig,
    baseline: float | None = None,
    *,
    progress: Progress | None = None,
) -> tuple[Applied, MonitorCheck]:
    """Apply ``delta`` unless a check fails; on failure the model is left as it was.

    ``progress`` follows the monitor's generations (before, when no ``baseline`` is given, and after).

    Example::

        handle, check = checked_apply(lm, delta, MonitorConfig(max_update_ratio=0.5))
        handle.restore()
    """
    ratios = update_ratios(lm, delta)
    worst = max(ratios, key=ratios.__getitem__)
    if config.max_update_ratio is not None and ratios[worst] > config.max_update_ratio:
        raise CollapseError(
            f"refused the {delta.method} edit of {', '.join(delta.case_ids) or 'the facts'}: its update at layer "
            f"{worst} is {ratios[worst]:.2f} of the weight's norm (limit {config.max_update_ratio}); "
            "edit at other layers, take the key statistics over more samples, or raise max_update_ratio",
            field="max_update_ratio",
        )
    if baseline is None:
        before = generation_entropy(lm, config, progress=labelled(progress, "collapse monitor, before"))
    else:
        before = baseline
    handle = apply(lm.model, lm.adapter, delta)
    after = generation_entropy(lm, config, progress=labelled(progress, "collapse monitor, after the edit"))
    if before > 0 and after < config.min_entropy_ratio * before:
        handle.restore()
        raise CollapseError(
            f"rolled back the {delta.method} edit of {', '.join(delta.case_ids) or 'the facts'}: generations "
            f"became repetitive (n-gram entropy {after:.2f} vs {before:.2f} before)"
        )
    return handle, MonitorCheck(ratios, before, after)
