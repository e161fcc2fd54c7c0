"""Suppress or enhance knowledge neurons and measure P(target) (Dai et al. 2022, Sec. 4).

Dai, Dong, Hao, Sui, Chang and Wei, "Knowledge Neurons in Pretrained Transformers",
ACL 2022. Suppressing sets the chosen neurons' activations (``mlp.post``) to 0;
enhancing doubles them. Like the attribution (locate/attribution.py), the
intervention acts at the LAST prompt token only: Dai et al.'s code changes the
activation at the [MASK] position the neurons were found at, and the last token is
the position an autoregressive model predicts from.

For each fact the report holds the mean P(target) over its prompts (rewrite prompt
and paraphrases):
- before any intervention;
- with the fact's own refined neurons changed;
- with the same number of random neurons changed, in the same layers (seeded);
and, as a control, P(target) of a seeded sample of unrelated facts (facts of other
relations) before and with the fact's own neurons changed.
Changes are relative: (after - before) / before, so a drop is negative.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from memloc.core.errors import MemlocError
from memloc.core.hooks import patch
from memloc.core.lm.facts import Fact
from memloc.core.lm.model import LM, encode, next_token_probs
from memloc.core.progress import Progress
from memloc.core.sites import Neuron, Site
from memloc.core.validation import at_least, one_of, positive
from memloc.locate.lm.knowledge_neurons import KNResult


@dataclass(frozen=True)
class InterventionConfig:
    """``suppress`` multiplies the neurons by 0, ``enhance`` by ``factor`` (2 in the paper)."""

    mode: Literal["suppress", "enhance"] = "suppress"
    factor: float = 2.0
    controls: int = 5  # unrelated facts per fact
    seed: int = 0

    @property
    def scale(self) -> float:
        return 0.0 if self.mode == "suppress" else self.factor

    def __post_init__(self) -> None:
        one_of(self, "mode", ("suppress", "enhance"))
        at_least(self, 0, "controls", "seed")
        positive(self, "factor")


@dataclass(frozen=True)
class ControlEffect:
    case_id: str
    before: float
    after: float

    @property
    def change(self) -> float:
        return _relative(self.before, self.after)


@dataclass(frozen=True)
class FactIntervention:
    """P(target) of one fact before and after changing its own or random neurons."""

    case_id: str
    relation: str
    neurons: tuple[Neuron, ...]
    random_neurons: tuple[Neuron, ...]
    before: float
    own: float
    random: float
    controls: tuple[ControlEffect, ...]

    @property
    def own_change(self) -> float:
        return _relative(self.before, self.own)

    @property
    def random_change(self) -> float:
        return _relative(self.before, self.random)

    @property
    def control_change(self) -> float | None:
        return _mean([c.change for c in self.controls])

    def to_dict(self) -> dict:
        return {
            "case_id": self.case_id,
            "relation": self.relation,
            "neurons": [list(n) for n in self.neurons],
            "random_neurons": [list(n) for n in self.random_neurons],
            "p_before": self.before,
            "p_own": self.own,
            "p_random": self.random,
            "own_change": self.own_change,
            "random_change": self.random_change,
            "controls": [
                {"case_id": c.case_id, "p_before": c.before, "p_after": c.after, "change": c.change}
                for c in self.controls
            ],
            "control_change": self.control_change,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> FactIntervention:
        """Read back what `to_dict` stored (the changes are recomputed from the probabilities)."""
        return cls(
            case_id=data["case_id"],
            relation=data["relation"],
            neurons=tuple((int(layer), int(index)) for layer, index in data["neurons"]),
            random_neurons=tuple((int(layer), int(index)) for layer, index in data["random_neurons"]),
            before=data["p_before"],
            own=data["p_own"],
            random=data["p_random"],
            controls=tuple(
                ControlEffect(c["case_id"], c["p_before"], c["p_after"]) for c in data["controls"]
            ),
        )


@dataclass(frozen=True)
class InterventionSummary:
    """Means over the facts that have neurons (relative changes; negative = drop; None without any)."""

    mode: str
    facts: int
    facts_without_neurons: int
    own_change: float | None
    random_change: float | None
    control_change: float | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class InterventionResult:
    """Every fact's intervention; ``to_dict`` is the JSON the ``suppress``/``enhance`` reports store.

    Example::

        result = intervene(lm, facts, found, InterventionConfig(mode="suppress"))
        result.summary().own_change
    """

    facts: tuple[FactIntervention, ...]
    config: InterventionConfig

    def summary(self) -> InterventionSummary:
        used = [f for f in self.facts if f.neurons]
        controls = [f.control_change for f in used if f.control_change is not None]
        return InterventionSummary(
            mode=self.config.mode,
            facts=len(used),
            facts_without_neurons=len(self.facts) - len(used),
            own_change=_mean([f.own_change for f in used]),
            random_change=_mean([f.random_change for f in used]),
            control_change=_mean(controls),
        )

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "summary": self.summary().to_dict(),
            "facts": [f.to_dict() for f in self.facts],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> InterventionResult:
        """Read back what `to_dict` stored; the summary is recomputed from the facts."""
        return cls(
            facts=tuple(FactIntervention.from_dict(f) for f in data["facts"]),
            config=InterventionConfig(**data["config"]),
        )


@contextmanager
def scaled_neurons(lm: LM, neurons: Iterable[Neuron], scale: float) -> Iterator[None]:
    """Within the body, multiply each neuron's activation at the last token by ``scale``."""
    by_layer: dict[int, list[int]] = {}
    for layer, index in neurons:
        lm.adapter.check_layer(layer)
        if not 0 <= index < lm.adapter.d_mlp:
            raise MemlocError(f"neuron index {index} is out of range; layers have {lm.adapter.d_mlp} neurons")
        by_layer.setdefault(layer, []).append(index)

    def scaler(indices: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
        def fn(act: torch.Tensor) -> torch.Tensor:  # (B, T, F)
            idx = torch.tensor(indices, device=act.device)
            out = act.clone()
            out[:, -1, idx] = act[:, -1, idx] * scale
            return out

        return fn

    fns = {Site(layer, "mlp.post"): scaler(indices) for layer, indices in by_layer.items()}
    with patch(lm.model, lm.adapter, fns):
        yield


def intervene(
    lm: LM,
    facts: Sequence[Fact],
    neurons: KNResult | Mapping[str, Iterable[Sequence[float]]],
    config: InterventionConfig = InterventionConfig(),
    *,
    progress: Progress | None = None,
) -> InterventionResult:
    """Suppress or enhance each fact's own neurons, random neurons, and check control facts.

    ``neurons`` is a `KNResult` or a mapping from case id to (layer, index[, score])
    rows. ``progress(facts done, facts, mode)`` is called after each fact.

        found = knowledge_neurons(lm, facts)
        result = intervene(lm, facts, found, InterventionConfig(mode="suppress"))
    """
    own = _neuron_sets(neurons)
    missing = [f.case_id for f in facts if f.case_id not in own]
    if missing:
        raise MemlocError(
            f"no neurons given for fact {missing[0]}; run knowledge neurons on these facts first"
        )
    for fact in facts:  # one-line errors for an empty target or a subject missing from the prompt
        encode(lm.tokenizer, fact.text, fact.subject, fact.target_true)
    prompts = {f.case_id: [_encoded(lm, f, text) for text in f.prompts()] for f in facts}
    before = {case: _mean_prob(lm, enc) for case, enc in prompts.items()}
    # Controls are measured on their rewrite prompt only.
    control_before = {case: _mean_prob(lm, enc[:1]) for case, enc in prompts.items()}
    results = []
    for position, fact in enumerate(facts):
        generator = torch.Generator(device=lm.device).manual_seed(config.seed + position)
        chosen = own[fact.case_id]
        randoms = random_neurons(lm, chosen, generator)
        controls = _controls(facts, fact, config.controls, generator)
        with scaled_neurons(lm, chosen, config.scale):
            p_own = _mean_prob(lm, prompts[fact.case_id])
            after = {c.case_id: _mean_prob(lm, prompts[c.case_id][:1]) for c in controls}
        with scaled_neurons(lm, randoms, config.scale):
            p_random = _mean_prob(lm, prompts[fact.case_id])
        results.append(
            FactIntervention(
                case_id=fact.case_id,
                relation=fact.relation_key,
                neurons=tuple(chosen),
                random_neurons=tuple(randoms),
                before=before[fact.case_id],
                own=p_own,
                random=p_random,
                controls=tuple(
                    ControlEffect(c.case_id, control_before[c.case_id], after[c.case_id]) for c in controls
                ),
            )
        )
        if progress:
            progress(position + 1, len(facts), config.mode)
    return InterventionResult(tuple(results), config)


def random_neurons(lm: LM, neurons: Sequence[Neuron], generator: torch.Generator) -> list[Neuron]:
    """As many random neurons as ``neurons`` has in each layer, none of them among ``neurons``."""
    counts: dict[int, int] = {}
    for layer, _ in neurons:
        counts[layer] = counts.get(layer, 0) + 1
    taken = set(neurons)
    picked: list[Neuron] = []
    for layer in sorted(counts):
        order = torch.randperm(lm.adapter.d_mlp, generator=generator, device=generator.device).tolist()
        free = [i for i in order if (layer, i) not in taken]
        picked.extend((layer, i) for i in sorted(free[: counts[layer]]))
    return picked


def _controls(facts: Sequence[Fact], fact: Fact, n: int, generator: torch.Generator) -> list[Fact]:
    """A seeded sample of facts of other relations."""
    others = [f for f in facts if f.relation_key != fact.relation_key]
    if not others or n == 0:
        return []
    order = torch.randperm(len(others), generator=generator, device=generator.device).tolist()
    return [others[i] for i in order[:n]]


def _neuron_sets(neurons: KNResult | Mapping[str, Iterable[Sequence[float]]]) -> dict[str, list[Neuron]]:
    if isinstance(neurons, KNResult):
        return {f.case_id: sorted(f.neuron_set()) for f in neurons.facts}
    return {str(case): sorted({(int(row[0]), int(row[1])) for row in rows}) for case, rows in neurons.items()}


def _encoded(lm: LM, fact: Fact, text: str) -> tuple[torch.Tensor, int]:
    enc = encode(lm.tokenizer, text, None, fact.target_true)
    return torch.tensor([enc.ids], device=lm.device), enc.target[0]


def _mean_prob(lm: LM, encoded: Sequence[tuple[torch.Tensor, int]]) -> float:
    with torch.no_grad():
        probs = [next_token_probs(lm.model, ids)[0, target].item() for ids, target in encoded]
    return sum(probs) / len(probs)


def _relative(before: float, after: float) -> float:
    return (after - before) / before if before > 0 else 0.0


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
