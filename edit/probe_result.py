"""The edit probe behind ``--layers auto``: its settings, its per-layer scores and its choice.

Hase et al. 2023 ("Does Localization Inform Editing?") found that where causal tracing
peaks does not predict where an edit works. So ``--layers auto`` edits a few probe facts
at each candidate layer (ROME) or span (MEMIT, AlphaEdit) and keeps the layer whose
edits score best on their own rewrite, paraphrase and neighbourhood prompts (ES, PS,
NS as in edit/evaluate.py); edit/layer_probe.py runs it.

Example::

    probe = LayerProbe.from_dict(json.loads(text))
    probe.layer, [(s.layer, s.es, s.ps, s.ns) for s in probe.scores]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from memloc.core.dataclass_files import from_plain
from memloc.core.validation import at_least, fail, in_unit_interval

RULE = (
    "maximise ES + PS over the candidates whose NS >= {floor} (over all candidates when none reaches it); "
    "ties: the larger margin (EM + PM) / 2, then the earlier layer"
)


@dataclass(frozen=True)
class ProbeConfig:
    """How ``--layers auto`` probes the candidate layers, and how it chooses.

    - ``facts``: probe facts per relation of the edited facts. They are the fact file's
      facts of that relation that are not being edited, in file order; when the file
      has fewer such facts, edited facts of the relation fill the rest (the result's
      ``edited_overlap`` counts them), so a one-fact file probes with that fact.
    - ``candidates``: the layers to try (ROME: the layer edited; MEMIT and AlphaEdit:
      the last layer of a span of ``EditPlan.memit_span`` layers); empty: `default_candidates`,
      every layer of a model of at most ``max_default`` layers, else that many spread
      over 10% to 50% of the depth.
    - ``steps``: target-optimisation steps of each probe edit; the real edit keeps its own.
    - ``ns_floor``: the specificity a candidate must keep to be eligible.

    Rule: maximise ES + PS over the candidates whose NS >= ``ns_floor`` (over all
    candidates when none reaches it); ties go to the larger mean margin
    (EM + PM) / 2, then to the earlier layer. With several relations, each layer's
    scores are the means over relations weighted by the edited facts of each.

        ProbeConfig(facts=3, candidates=(2, 3, 4, 5, 6), steps=10, ns_floor=0.7)
    """

    facts: int = 3
    candidates: tuple[int, ...] = ()
    steps: int = 10
    ns_floor: float = 0.7
    max_default: int = 8

    def __post_init__(self) -> None:
        at_least(self, 1, "facts", "steps", "max_default")
        in_unit_interval(self, "ns_floor")
        if any(layer < 0 for layer in self.candidates):
            raise fail(self, "candidates", f"must be layer numbers (0 or more), got {self.candidates}")
        if len(set(self.candidates)) != len(self.candidates):
            raise fail(self, "candidates", f"names a layer twice: {self.candidates}")

    def rule(self) -> str:
        return RULE.format(floor=self.ns_floor)

    def layers_for(self, n_layers: int) -> tuple[int, ...]:
        """The candidates on a model of ``n_layers``: the given ones, else `default_candidates`."""
        return self.candidates or default_candidates(n_layers, self.max_default)


def default_candidates(n_layers: int, most: int = 8) -> tuple[int, ...]:
    """Every layer of a model of at most ``most`` layers; else ``most`` spread from 10% to 50% of the depth.

    A band too short to hold ``most`` layers is widened upwards, so a deeper model is never
    probed at fewer layers than a shallower one (9 layers: 1-8, not 1-4).

    Where edits work best lies in that band for the models editing papers report: ROME's
    GPT-2 XL layer 17 of 48, GPT-J 5 of 28 (Meng et al. 2022), MEMIT's spans 3-8 of 28 and
    13-17 of 48 (Meng et al. 2023). Probing every layer of a 30-layer model costs 30 ×
    (relations × facts) edits; a spread keeps the first probe within minutes per relation.

        default_candidates(30)  # (3, 5, 6, 8, 10, 12, 13, 15)
    """
    if n_layers <= most:
        return tuple(range(n_layers))
    low = round(0.1 * n_layers)
    high = min(n_layers - 1, max(round(0.5 * n_layers), low + most - 1))
    band = list(range(low, high + 1))
    if len(band) <= most:
        return tuple(band)
    picks = [band[round(i * (len(band) - 1) / (most - 1))] for i in range(most)]
    return tuple(dict.fromkeys(picks))


@dataclass(frozen=True)
class LayerScore:
    """The probe edits at one candidate, scored on their own prompts."""

    layer: int  # the candidate: ROME's layer, the last layer of a MEMIT/AlphaEdit span
    layers: tuple[int, ...]  # the layers edited
    es: float
    ps: float | None  # None: the probe facts have no paraphrases
    ns: float | None  # None: no neighbourhood prompts
    margin: float  # mean of EM and PM (PM when there are paraphrases)

    @property
    def reach(self) -> float:
        """ES + PS, what the rule maximises."""
        return self.es + (self.ps or 0.0)


@dataclass(frozen=True)
class RelationProbe:
    """The probe of one relation: its facts and every candidate's scores (what is cached)."""

    relation: str
    facts: tuple[str, ...]  # case ids of the probe facts
    edited_overlap: int  # how many of them are also being edited (0: all held out)
    scores: tuple[LayerScore, ...]
    seconds: float  # time the probe took when it ran
    cached: bool = False  # read back from the cache in this run


@dataclass(frozen=True)
class LayerProbe:
    """Every relation's probe, the pooled per-layer scores and the layer (or span) chosen."""

    method: str
    rule: str
    relations: tuple[RelationProbe, ...]
    scores: tuple[LayerScore, ...]  # pooled over relations
    layer: int  # the chosen candidate
    layers: tuple[int, ...]  # the layers the edit will use
    floor_met: bool  # some candidate kept NS at the floor

    @property
    def cached(self) -> bool:
        return all(r.cached for r in self.relations)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> LayerProbe:
        return from_plain(cls, data)


def _weighted(values: Sequence[tuple[float | None, float]]) -> float | None:
    known = [(v, w) for v, w in values if v is not None]
    if not known:
        return None
    return sum(v * w for v, w in known) / sum(w for _, w in known)


def pooled(probes: Sequence[RelationProbe], weights: Sequence[float]) -> tuple[LayerScore, ...]:
    """Each candidate's scores averaged over relations, weighted by ``weights`` (edited facts)."""
    rows = []
    for i, first in enumerate(probes[0].scores):
        column = [p.scores[i] for p in probes]
        es = _weighted([(s.es, w) for s, w in zip(column, weights, strict=True)])
        margin = _weighted([(s.margin, w) for s, w in zip(column, weights, strict=True)])
        rows.append(
            LayerScore(
                first.layer,
                first.layers,
                es or 0.0,
                _weighted([(s.ps, w) for s, w in zip(column, weights, strict=True)]),
                _weighted([(s.ns, w) for s, w in zip(column, weights, strict=True)]),
                margin or 0.0,
            )
        )
    return tuple(rows)


def choose(scores: Sequence[LayerScore], ns_floor: float) -> tuple[LayerScore, bool]:
    """The candidate the rule of `ProbeConfig` picks, and whether any candidate met the NS floor."""
    eligible = [s for s in scores if s.ns is None or s.ns >= ns_floor]
    pool = eligible or list(scores)
    # Rounding keeps float noise from breaking a tie the rule means to send to the earlier layer.
    best = max(pool, key=lambda s: (round(s.reach, 9), round(s.margin, 9), -s.layer))
    return best, bool(eligible)
