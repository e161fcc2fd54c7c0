"""Knowledge neurons by integrated gradients (Dai et al. 2022).

Dai, Dong, Hao, Sui, Chang and Wei, "Knowledge Neurons in Pretrained Transformers",
ACL 2022. A neuron is one coordinate a_i of a layer's FFN down-projection input
(``mlp.post``) at the last prompt token. Its attribution to the first target token y*
is the integrated gradient from a zero baseline, as a left Riemann sum of m steps:

    attr_i = a_i * (1/m) * sum_{k=0}^{m-1} dP(y*)/da_i  at (k/m) * a

where only that layer's activation at that one position is scaled (captum's
``LayerIntegratedGradients`` would scale every position: a different quantity). P is
the probability of y*, or its log-probability with ``log_prob=True``.

Per prompt, the coarse set holds the neurons with attr > ``coarse`` x the maximum over
all layers. A fact's refined set holds the neurons in the coarse sets of at least
``share`` of its prompts (the rewrite prompt and its paraphrases). Relation-level
neurons are refined neurons shared by at least ``relation_share`` of a relation's facts.

Two exact ways to compute the same attributions:

- ``plain`` (the reference approach): per layer, the full prompt with the m steps as
  rows of one batch.
- ``fast``: the prompt prefix (all tokens but the last) runs once and its key/value
  cache is kept (`core.lm.prefix_runner.PrefixCache`); then the m steps of EVERY layer are rows of one batch over the last
  token only (rows = layers x steps, each row patching its own layer).

Both go through captum's ``IntegratedGradients`` (method ``riemann_left``, whose alphas
are k/m for k = 0..m-1 with weights 1/m), with hooks from core/hooks.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from memloc.core.classifier.gradients import frozen_parameters
from memloc.core.errors import MemlocError
from memloc.core.finite import require_finite
from memloc.core.hooks import patch, trace
from memloc.core.lm.facts import Fact
from memloc.core.lm.model import LM, encode
from memloc.core.lm.prefix_runner import PrefixCache, cache_inputs
from memloc.core.progress import Progress
from memloc.core.sites import Neuron, Site
from memloc.core.validation import at_least, fail, in_unit_interval, one_of
from memloc.locate.graph import share_count
from memloc.locate.lm.integrated import integrated_gradients


@dataclass(frozen=True)
class KNConfig:
    """Settings of the knowledge-neuron search (defaults from Dai et al. 2022).

    ``batch_size`` is the number of rows (one row = one layer at one step) per forward
    pass; ``None`` runs all rows at once. Smaller chunks bound memory: each chunk's
    activations are recomputed during the backward pass instead of kept. Results do
    not depend on it.
    """

    steps: int = 20
    coarse: float = 0.2
    share: float = 0.7
    relation_share: float = 0.1
    log_prob: bool = False
    layers: tuple[int, ...] | None = None
    batch_size: int | None = None
    method: Literal["fast", "plain"] = "fast"

    def __post_init__(self) -> None:
        at_least(self, 1, "steps", "batch_size")
        in_unit_interval(self, "coarse", "share", "relation_share")
        one_of(self, "method", ("fast", "plain"))
        if self.layers is not None and not self.layers:
            raise fail(self, "layers", "is empty; leave it out to use every layer")

    def layer_list(self, lm: LM) -> list[int]:
        """The chosen layers in order; a one-line LayerNotFoundError for one the model lacks."""
        if self.layers is None:
            return list(range(lm.n_layers))
        return sorted({lm.adapter.check_layer(layer) for layer in self.layers})


@dataclass(frozen=True)
class PromptAttribution:
    """Attributions of one prompt: ``scores[j, i]`` for neuron i of ``layers[j]``."""

    scores: torch.Tensor  # (len(layers), d_mlp), float32
    layers: tuple[int, ...]
    probability: float  # P(first target token | prompt), unpatched


@dataclass
class FactNeurons:
    """The knowledge neurons of one fact."""

    case_id: str
    relation: str
    target: str
    prompts: list[str]
    probabilities: list[float]  # P(target) per prompt, unpatched
    neurons: list[tuple[int, int, float]]  # refined: (layer, index, mean attribution), best first
    coarse: list[list[tuple[int, int]]]  # per prompt
    per_layer: dict[int, int]  # refined neurons per layer

    def neuron_set(self) -> set[Neuron]:
        return {(layer, index) for layer, index, _ in self.neurons}

    def to_dict(self) -> dict:
        return {
            "case_id": self.case_id,
            "relation": self.relation,
            "target": self.target,
            "prompts": list(self.prompts),
            "probabilities": list(self.probabilities),
            "neurons": [[layer, index, score] for layer, index, score in self.neurons],
            "coarse": [[[layer, index] for layer, index in c] for c in self.coarse],
            "per_layer": {str(layer): n for layer, n in sorted(self.per_layer.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> FactNeurons:
        """Read back what `to_dict` stored."""
        return cls(
            case_id=data["case_id"],
            relation=data["relation"],
            target=data["target"],
            prompts=list(data["prompts"]),
            probabilities=list(data["probabilities"]),
            neurons=[(int(layer), int(index), score) for layer, index, score in data["neurons"]],
            coarse=[[(int(layer), int(index)) for layer, index in c] for c in data["coarse"]],
            per_layer={int(layer): n for layer, n in data["per_layer"].items()},
        )


@dataclass
class KNResult:
    """Knowledge neurons of every fact, and the neurons shared across each relation."""

    facts: list[FactNeurons]
    relations: dict[str, list[tuple[int, int, int]]]  # relation -> (layer, index, facts sharing it)
    config: KNConfig = field(default_factory=KNConfig)

    def by_case(self) -> dict[str, FactNeurons]:
        return {f.case_id: f for f in self.facts}

    def to_dict(self) -> dict:
        config = asdict(self.config)
        config["layers"] = list(self.config.layers) if self.config.layers is not None else None
        return {
            "config": config,
            "facts": [f.to_dict() for f in self.facts],
            "relations": {
                key: [[layer, index, n] for layer, index, n in neurons]
                for key, neurons in self.relations.items()
            },
        }


# --- the sets ---------------------------------------------------------------------------


def coarse_neurons(scores: torch.Tensor, layers: Sequence[int], coarse: float) -> list[Neuron]:
    """Neurons whose attribution exceeds ``coarse`` x the maximum over all layers.

    ``scores`` is (len(layers), d_mlp). With no positive attribution the set is empty
    (a threshold at or below zero would select neurons that work against the target).
    """
    top = scores.max()
    if not top > 0:
        return []
    rows, cols = torch.nonzero(scores > coarse * top, as_tuple=True)
    return sorted((layers[r], c) for r, c in zip(rows.tolist(), cols.tolist(), strict=True))


def refined_neurons(coarse_sets: Sequence[Iterable[Neuron]], share: float) -> set[Neuron]:
    """Neurons in the coarse sets of at least ``share`` of the prompts."""
    if not coarse_sets:
        return set()
    counts = Counter(n for c in coarse_sets for n in set(c))
    need = share_count(share, len(coarse_sets))
    return {n for n, k in counts.items() if k >= need}


def relation_neurons(
    refined: Mapping[str, Iterable[Neuron]], relation_of: Mapping[str, str], share: float
) -> dict[str, list[tuple[int, int, int]]]:
    """Per relation, the refined neurons shared by at least ``share`` of its facts.

    ``refined`` and ``relation_of`` are keyed by case id. A neuron counts as shared
    only when at least two facts hold it: with few facts per relation, ``share`` of
    them is below one fact and every refined neuron would otherwise qualify.
    Returned as (layer, index, number of facts), most shared first.
    """
    members: dict[str, list[str]] = {}
    for case, relation in relation_of.items():
        members.setdefault(relation, []).append(case)
    out: dict[str, list[tuple[int, int, int]]] = {}
    for relation, cases in members.items():
        counts = Counter(n for case in cases for n in set(refined.get(case, ())))
        need = max(2, share_count(share, len(cases)))
        shared = [(layer, index, k) for (layer, index), k in counts.items() if k >= need]
        out[relation] = sorted(shared, key=lambda t: (-t[2], t[0], t[1]))
    return out


# --- attributions -----------------------------------------------------------------------


def attribute_prompt(lm: LM, text: str, target: str, config: KNConfig = KNConfig()) -> PromptAttribution:
    """Integrated-gradient attributions of every chosen layer's neurons for one prompt."""
    layers = config.layer_list(lm)
    encoded = encode(lm.tokenizer, text, None, target)
    ids = torch.tensor([encoded.ids], device=lm.device)
    run = _fast if config.method == "fast" else _plain
    with frozen_parameters(lm.model):
        scores, probability = run(lm, ids, encoded.target[0], layers, config)
    return PromptAttribution(scores.float(), tuple(layers), probability)


def knowledge_neurons(
    lm: LM,
    facts: Sequence[Fact],
    config: KNConfig = KNConfig(),
    *,
    progress: Progress | None = None,
) -> KNResult:
    """Coarse, refined and relation-level knowledge neurons of each fact (Dai et al. 2022).

    ``progress(facts done, facts, description)`` is called after each fact.

        lm = load_language_model("smollm2-135m")
        result = knowledge_neurons(lm, load_facts("facts.json"), KNConfig(steps=20))
    """
    config.layer_list(lm)
    if not facts:
        raise MemlocError("no facts to attribute")
    results = []
    for done, fact in enumerate(facts, 1):
        # One-line errors for an empty target or a subject missing from the prompt.
        encode(lm.tokenizer, fact.text, fact.subject, fact.target_true)
        prompts = fact.prompts()
        attributions = [attribute_prompt(lm, p, fact.target_true, config) for p in prompts]
        coarse = [coarse_neurons(a.scores, a.layers, config.coarse) for a in attributions]
        refined = refined_neurons(coarse, config.share)
        mean = torch.stack([a.scores for a in attributions]).mean(0)
        row = {layer: j for j, layer in enumerate(attributions[0].layers)}
        neurons = sorted(
            ((layer, index, float(mean[row[layer], index])) for layer, index in refined),
            key=lambda t: (-t[2], t[0], t[1]),
        )
        results.append(
            FactNeurons(
                case_id=fact.case_id,
                relation=fact.relation_key,
                target=fact.target_true,
                prompts=prompts,
                probabilities=[a.probability for a in attributions],
                neurons=neurons,
                coarse=coarse,
                per_layer=dict(sorted(Counter(layer for layer, _, _ in neurons).items())),
            )
        )
        if progress:
            progress(done, len(facts), "knowledge neurons")
    relations = relation_neurons(
        {f.case_id: f.neuron_set() for f in results},
        {f.case_id: f.relation for f in results},
        config.relation_share,
    )
    return KNResult(results, relations, config)


def _fast(
    lm: LM, ids: torch.Tensor, target: int, layers: list[int], config: KNConfig
) -> tuple[torch.Tensor, float]:
    """All layers' steps as rows of one batch over the last token, on the prefix's cache."""
    model, adapter = lm.model, lm.adapter
    sites = [Site(layer, "mlp.post") for layer in layers]
    prefix, last = ids[:, :-1], ids[:, -1:]
    with torch.no_grad():
        kv = _prefix_cache(lm, prefix)
        with trace(model, adapter, sites) as seen:
            logits = model(input_ids=last, **_cache_kwargs(model, kv, 1), logits_to_keep=1).logits
        require_finite(model, adapter, logits, "the prompt's clean run", input_ids=ids)
        # Layers may sit on several devices (--device-map): gather their keys on the input's.
        clean = torch.stack([seen[s][0, -1].to(ids.device) for s in sites]).float()  # (L, F)
    probability = torch.softmax(logits[0, -1].float(), -1)[target].item()

    def rows(scaled: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        n = scaled.shape[0]
        fns = {sites[j]: _last_token_patch(scaled, which == j) for j in which.unique().tolist()}
        with patch(model, adapter, fns):
            out = model(input_ids=last.expand(n, 1), **_cache_kwargs(model, kv, n), logits_to_keep=1)
        return _score(out.logits[:, -1], target, config.log_prob)

    which = torch.arange(len(layers), device=ids.device)
    return integrated_gradients(rows, clean, which, config.steps, config.batch_size), probability


def _plain(
    lm: LM, ids: torch.Tensor, target: int, layers: list[int], config: KNConfig
) -> tuple[torch.Tensor, float]:
    """The reference approach: per layer, the full prompt with the m steps batched."""
    model, adapter = lm.model, lm.adapter
    sites = [Site(layer, "mlp.post") for layer in layers]
    with torch.no_grad(), trace(model, adapter, sites) as seen:
        logits = model(input_ids=ids, logits_to_keep=1).logits
        require_finite(model, adapter, logits, "the prompt's clean run", input_ids=ids)
    probability = torch.softmax(logits[0, -1].float(), -1)[target].item()
    scores = []
    for site in sites:
        clean = seen[site][:, -1].float()  # (1, F)

        def rows(scaled: torch.Tensor, which: torch.Tensor, site: Site = site) -> torch.Tensor:
            n = scaled.shape[0]
            with patch(model, adapter, {site: _last_token_patch(scaled, which == 0)}):
                out = model(input_ids=ids.expand(n, -1), logits_to_keep=1)
            return _score(out.logits[:, -1], target, config.log_prob)

        which = torch.zeros(1, dtype=torch.long, device=ids.device)
        scores.append(integrated_gradients(rows, clean, which, config.steps, config.batch_size))
    return torch.cat(scores), probability


def _last_token_patch(scaled: torch.Tensor, mine: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Replace the last token's activation by ``scaled`` in the rows flagged by ``mine``."""

    def fn(act: torch.Tensor) -> torch.Tensor:  # act: (R, T, F)
        new_last = torch.where(mine[:, None].to(act.device), scaled.to(act.device, act.dtype), act[:, -1])
        return torch.cat([act[:, :-1], new_last[:, None]], dim=1)

    return fn


def _score(logits: torch.Tensor, target: int, log_prob: bool) -> torch.Tensor:
    logits = logits.float()
    probs = torch.log_softmax(logits, -1) if log_prob else torch.softmax(logits, -1)
    return probs[:, target]


# --- key/value cache of the prefix --------------------------------------------------------


def _prefix_cache(lm: LM, prefix: torch.Tensor) -> PrefixCache | None:
    """The prefix's keys and values (one row); None without a prefix.

    The base model stops at the final norm: only the cache is kept, so no logits are formed.
    """
    if prefix.shape[1] == 0:
        return None
    return PrefixCache.run(lm.model.base_model, input_ids=prefix)[0]


def _cache_kwargs(model: torch.nn.Module, kv: PrefixCache | None, rows: int) -> dict:
    """A fresh cache holding the prefix repeated over ``rows`` (a forward pass extends it in place)."""
    return {} if kv is None else cache_inputs(model, kv.fresh(rows=rows))
