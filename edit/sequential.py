"""The sequential editing protocol: batches of edits one after another, never restored, measured as they pile up.

Models collapse after a few hundred sequential edits (Gupta et al. 2024; EasyEdit
issues #47, #35, #236), and AlphaEdit (Fang et al., ICLR 2025) is judged by what is
left after 2,000 of them. Its numbers are easy to misread when the batching or the
moment of measuring differs (EasyEdit #518), so the protocol is spelled out and stored
with the result:

- the facts arrive in batches of ``batch_size``, each edited on top of all earlier ones;
- every ``every`` batches, and after the last, ES, PS, NS (and fluency when measured)
  are computed on EVERY fact edited so far;
- retention: at the same moments, ES of the first ``retention_facts`` facts.

    config = SequentialConfig(batch_size=100, every=1)
    config.describe()
"""

from __future__ import annotations

from dataclasses import dataclass

from memloc.core.validation import at_least


@dataclass(frozen=True)
class SequentialConfig:
    """Edits per batch, batches between measurements, and how many of the first facts retention follows."""

    batch_size: int = 1
    every: int = 1
    retention_facts: int = 100

    def __post_init__(self) -> None:
        at_least(self, 1, "batch_size", "every", "retention_facts")

    def describe(self) -> str:
        """The protocol in one sentence, written into the report's config."""
        return (
            f"sequential: facts edited in batches of {self.batch_size}, each on top of all earlier edits "
            f"(never restored); every {self.every} batch(es) and after the last, ES/PS/NS/fluency over every "
            f"fact edited so far, and retention = ES of the first {self.retention_facts} facts"
        )

    def checkpoints(self, facts: int) -> list[int]:
        """The numbers of facts edited when the protocol measures (the last always included)."""
        batches = -(-facts // self.batch_size)
        done = [min(b * self.batch_size, facts) for b in range(1, batches + 1) if b % self.every == 0]
        return done if done and done[-1] == facts else [*done, facts]


@dataclass(frozen=True)
class CurvePoint:
    """The scores after ``edits`` sequential edits: over all facts edited so far, and retention."""

    edits: int
    es: float | None
    ps: float | None
    ns: float | None
    fluency: float | None
    retention_es: float | None
