"""From a method name to an editor: layer choice, key statistics, templates, neurons.

`prepare_editor` does the shared, per-model work once (the layer choice, cached key
statistics, cached context templates, knowledge neurons for the KN edit) and returns
an `Editor`: a function from facts to one `WeightDelta`, computed on the model as it is
when called.

- Layers not given are chosen by ``layer_rule``: ``probe`` (``--layers auto``) edits a
  few probe facts at every candidate and keeps the layer whose edits work best
  (edit/layer_probe.py; Hase et al. 2023); ``trace`` (``--layers trace``) takes the
  causal-tracing peak of the MLP indirect effect (Meng et al. 2022).

- ROME edits one fact per rank-one delta; several facts give the sum of their deltas,
  each computed on the model as given (``batch``), or in turn when the caller applies
  them one by one (``sequential``). Facts edited alone (``single``) can have their
  deltas computed together (`independent_editor`): their targets are optimised as rows
  of one batch (``RomeConfig.target_batch``), with the same deltas.
- MEMIT edits all given facts in one delta over a span of layers.
- AlphaEdit (Fang et al. 2025) edits like MEMIT, each layer's update confined to the
  null space of its key statistics; in a sequential run (``sequential``) each call's
  keys are passed to the next as K_p. The keys live in the editor of one
  `prepare_editor` call, so separate runs never share them.
- ``null_space`` with ROME or MEMIT projects their updates the same way (ΔW ← ΔW P).
- KN edits each fact's refined knowledge neurons, minus the neurons its relation shares
  (Dai et al. 2022), found once for all facts of the call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

from memloc.core.errors import MemlocError
from memloc.core.lm.facts import Fact, require_edit_targets
from memloc.core.lm.model import LM, encode
from memloc.core.progress import Progress, labelled, within
from memloc.core.validation import at_least, one_of
from memloc.edit.alphaedit import AlphaEditConfig, EditedKeys, compute_alphaedit
from memloc.edit.delta import Editor, IndependentEditor, WeightDelta, require_editable
from memloc.edit.kn_edit import KNEditConfig, compute_kn_edit
from memloc.edit.layer_probe import Span, probe_layers
from memloc.edit.memit import MemitConfig, compute_memit
from memloc.edit.null_space import NullSpaceConfig, Projector, project_delta, projectors_by_layer
from memloc.edit.probe_result import LayerProbe, ProbeConfig
from memloc.edit.rome import RomeConfig, compute_rome_batch
from memloc.edit.stats import KeyStats, StatsConfig, key_statistics_by_layer
from memloc.edit.templates import TemplateConfig, context_templates
from memloc.locate.lm.knowledge_neurons import KNConfig, knowledge_neurons
from memloc.locate.lm.tracing import TraceConfig, average_best_layer, trace_fact

METHODS = ("rome", "memit", "kn", "alphaedit")
SPAN_METHODS = ("memit", "alphaedit")  # methods that edit all facts at once over a span of layers
LAYER_RULES = ("probe", "trace")  # how layers not given are chosen: --layers auto, --layers trace


@dataclass(frozen=True)
class EditPlan:
    """What ``memloc edit apply|eval`` was asked to do."""

    method: str
    layers: tuple[int, ...] | None = None  # None: choose by ``layer_rule``
    layer_rule: str = "probe"  # probe: edit probe facts at each candidate (auto); trace: causal tracing
    probe: ProbeConfig = field(default_factory=ProbeConfig)  # the edit probe and its rule
    stats: StatsConfig = field(default_factory=StatsConfig)
    templates: TemplateConfig = field(default_factory=TemplateConfig)
    auto_facts: int = 10  # facts traced to choose the layer (layer_rule "trace")
    auto_trace: TraceConfig = field(default_factory=lambda: TraceConfig(samples=5, kinds=("mlp",)))
    memit_span: int = 5  # MEMIT layers ending at the chosen layer
    rome: RomeConfig | None = None  # its layer is overridden by the chosen one
    memit: MemitConfig = field(default_factory=MemitConfig)
    alphaedit: AlphaEditConfig = field(default_factory=AlphaEditConfig)  # its layers: the chosen ones
    # ROME/MEMIT: project every update onto this null space; AlphaEdit: its null space
    # (None: ``alphaedit.null_space``).
    null_space: NullSpaceConfig | None = None
    sequential: bool = False  # AlphaEdit: carry each call's keys into the next call (K_p)
    kn: KNConfig = field(default_factory=KNConfig)
    kn_edit: KNEditConfig = field(default_factory=KNEditConfig)

    def __post_init__(self) -> None:
        one_of(self, "method", METHODS)
        one_of(self, "layer_rule", LAYER_RULES)
        at_least(self, 1, "auto_facts", "memit_span")


def auto_layer(lm: LM, facts: Sequence[Fact], plan: EditPlan, progress: Progress | None = None) -> int:
    """The peak MLP indirect effect at the subject's last token, averaged over facts (causal tracing)."""
    traced = []
    chosen = list(facts[: plan.auto_facts])
    # A 10-layer window covers most of a small model and flattens the curve to a tie;
    # below 20 layers it shrinks to a quarter of the model.
    window = plan.auto_trace.window if lm.n_layers >= 20 else max(1, lm.n_layers // 4)
    for i, fact in enumerate(chosen):
        # Only the last subject token's row decides the layer; tracing just it is ~T times cheaper.
        last = encode(lm.tokenizer, fact.prompt, fact.subject).last_subject
        cells = within(progress, i, len(chosen), "tracing for the edit layer")
        config = replace(plan.auto_trace, window=window, tokens=(last,))
        traced.append(trace_fact(lm, fact, config, progress=cells))
        if progress is not None:
            progress(i + 1, len(chosen), "tracing for the edit layer")
    layer = average_best_layer(traced)
    if layer is None:
        raise MemlocError(
            "causal tracing found no MLP effect to choose a layer from; pass layers", field="layers"
        )
    return layer


def span_of(plan: EditPlan, last: int) -> tuple[int, ...]:
    """The layers edited for candidate ``last``: itself (ROME), or the MEMIT span ending there."""
    if plan.method == "rome":
        return (last,)
    return tuple(range(max(0, last - plan.memit_span + 1), last + 1))


def edit_layers(
    lm: LM,
    facts: Sequence[Fact],
    plan: EditPlan,
    progress: Progress | None = None,
    pool: Sequence[Fact] = (),
) -> tuple[tuple[int, ...], LayerProbe | None]:
    """The layers to edit, and the edit probe that chose them (None when it did not run)."""
    if plan.layers is not None:
        return tuple(lm.adapter.check_layer(layer) for layer in plan.layers), None
    if plan.method == "kn":
        return tuple(range(lm.n_layers)), None  # neurons are searched in every layer
    if plan.layer_rule == "probe":
        probe = edit_probe(lm, facts, plan, pool, progress)
        return probe.layers, probe
    return span_of(plan, auto_layer(lm, facts, plan, progress)), None


def _quick(plan: EditPlan) -> EditPlan:
    """``plan`` with the probe's fewer target-optimisation steps."""
    steps = plan.probe.steps
    rome = plan.rome or RomeConfig(layer=0)
    return replace(
        plan,
        rome=replace(rome, target=replace(rome.target, steps=steps)),
        memit=replace(plan.memit, target=replace(plan.memit.target, steps=steps)),
        alphaedit=replace(plan.alphaedit, target=replace(plan.alphaedit.target, steps=steps)),
        sequential=False,
    )


def edit_probe(
    lm: LM,
    facts: Sequence[Fact],
    plan: EditPlan,
    pool: Sequence[Fact] = (),
    progress: Progress | None = None,
) -> LayerProbe:
    """`probe_layers` over ``plan.probe.layers_for(n_layers)``, with probe facts from ``pool``.

    Example::

        probe = edit_probe(lm, facts, EditPlan("rome"), pool=all_facts)
        probe.layer, [(s.layer, s.es, s.ps, s.ns) for s in probe.scores]
    """
    candidates = plan.probe.layers_for(lm.n_layers)
    spans: list[Span] = [(lm.adapter.check_layer(c), span_of(plan, c)) for c in candidates]
    needed = sorted({layer for _, layers in spans for layer in layers})
    # One pass over the corpus serves every candidate's statistics (and the edit after).
    stats = key_statistics_by_layer(lm, needed, plan.stats, progress=labelled(progress, "key statistics"))
    templates = context_templates(lm, plan.templates)
    quick = _quick(plan)

    def editor_for(layers: tuple[int, ...], steps: Progress | None) -> Editor:
        chosen = {layer: stats[layer] for layer in layers}
        return _weight_editor(lm, quick, layers, chosen, templates, steps)[0]

    # No part in a probe edit's scores (the probe's own facts, candidates and steps are in
    # its key; its floor only chooses among the scores, so a new floor reuses them).
    unused = ("layers", "kn", "kn_edit", "auto_trace", "auto_facts", "probe")
    setup = {
        "plan": {k: v for k, v in asdict(quick).items() if k not in unused},
        "statistics": [stats[layer].key for layer in needed],
    }
    return probe_layers(
        lm, facts, pool, spans, editor_for, plan.probe, plan.method, setup,
        together=plan.method in SPAN_METHODS, progress=labelled(progress, "choosing layers"),
    )  # fmt: skip


def unedited(fact: Fact, method: str, reason: str) -> WeightDelta:
    """An empty delta for a fact the method cannot edit; its ``unedited`` says why."""
    return WeightDelta(method=method, layers=(), case_ids=(fact.case_id,), unedited=reason)


def combine(deltas: Sequence[WeightDelta], method: str) -> WeightDelta:
    """One delta holding several; `apply` sums the parts of a layer before rounding once."""
    if len(deltas) == 1:
        return deltas[0]
    return WeightDelta(
        method=method,
        layers=tuple(part for d in deltas for part in d.layers),
        case_ids=tuple(c for d in deltas for c in d.case_ids),
        config=deltas[0].config if deltas else {},
        parts=tuple(deltas),
    )


@dataclass(frozen=True)
class EditChoice:
    """What `prepare_editor` chose for a plan: layers, and what it found on the way."""

    method: str
    layers: tuple[int, ...]
    auto_layers: bool  # chosen by the edit probe (``probe`` holds it) or by causal tracing
    stats: Mapping[int, KeyStats] = field(default_factory=dict)  # key statistics per layer (ROME/MEMIT)
    projectors: Mapping[int, Projector] = field(default_factory=dict)  # null-space projectors per layer
    templates: tuple[str, ...] = ()
    neurons: Mapping[str, int] = field(default_factory=dict)  # KN: neurons per case id
    relation_neurons: Mapping[str, int] = field(default_factory=dict)  # KN: per relation
    probe: LayerProbe | None = None  # --layers auto: the edit probe's scores and choice


def prepare_editor(
    lm: LM,
    facts: Sequence[Fact],
    plan: EditPlan,
    progress: Progress | None = None,
    pool: Sequence[Fact] = (),
) -> tuple[Editor, EditChoice]:
    """The editor for ``plan`` and a record of what was chosen (layers, statistics).

    ``pool``: the fact file the facts come from, where the edit probe of ``--layers
    auto`` takes its held-out facts (empty: it probes with the facts to edit).

    Example::

        editor, choice = prepare_editor(lm, facts, EditPlan("rome", layers=(6,)))
        delta = editor(facts[:1])
    """
    require_edit_targets(facts)
    layers, probe = edit_layers(lm, facts, plan, progress, pool)
    choice = EditChoice(plan.method, layers, auto_layers=plan.layers is None, probe=probe)
    if plan.method == "kn":
        found = knowledge_neurons(lm, facts, plan.kn, progress=progress)
        by_case = found.by_case()
        shared = found.relations
        choice = replace(
            choice,
            neurons={f.case_id: len(f.neurons) for f in found.facts},
            relation_neurons={r: len(n) for r, n in shared.items()},
        )

        def kn_editor(chosen: Sequence[Fact]) -> WeightDelta:
            deltas = []
            for fact in chosen:
                neurons = {(layer, index) for layer, index, _ in by_case[fact.case_id].neurons}
                exclude = {(layer, index) for layer, index, _ in shared.get(fact.relation_key, [])}
                if not neurons - exclude:
                    # Dai et al.'s method has nothing to edit here; the fact stays as it is
                    # and is reported, so one such fact does not stop an evaluation.
                    deltas.append(
                        unedited(fact, "kn", "no knowledge neurons left after excluding relation neurons")
                    )
                    continue
                deltas.append(compute_kn_edit(lm, fact, neurons, plan.kn_edit, exclude=exclude))
            return combine(deltas, "kn")

        return kn_editor, choice

    # An offloaded layer is refused before its statistics are taken (core/lm/device_map.py).
    require_editable(lm.model, lm.adapter, layers, f"the {plan.method} edit")
    stats = key_statistics_by_layer(lm, layers, plan.stats, progress=labelled(progress, "key statistics"))
    if progress is not None:
        progress(0, 1, "context templates")  # sampled once per model, then cached
    templates = context_templates(lm, plan.templates)
    editor, projectors = _weight_editor(lm, plan, layers, stats, templates, progress)
    return editor, replace(choice, stats=dict(stats), templates=tuple(templates), projectors=projectors)


def _weight_editor(
    lm: LM,
    plan: EditPlan,
    layers: tuple[int, ...],
    stats: Mapping[int, KeyStats],
    templates: Sequence[str],
    progress: Progress | None,
) -> tuple[Editor, dict[int, Projector]]:
    """The ROME, MEMIT or AlphaEdit editor over ``layers``, and its null-space projectors."""
    space = plan.null_space or (plan.alphaedit.null_space if plan.method == "alphaedit" else None)
    projectors = projectors_by_layer(stats, space) if space is not None else {}
    if plan.method == "rome":
        return _rome_editor(lm, plan, layers[0], stats, templates, projectors, progress), projectors
    if plan.method == "alphaedit":
        return _alphaedit_editor(lm, plan, layers, projectors, templates, progress), projectors

    memit = replace(plan.memit, layers=layers)
    projected = projectors or None

    def memit_editor(chosen: Sequence[Fact]) -> WeightDelta:
        steps = labelled(progress, "MEMIT")
        return compute_memit(lm, chosen, stats, memit, templates, progress=steps, projectors=projected)

    return memit_editor, projectors


def independent_editor(
    lm: LM, plan: EditPlan, choice: EditChoice, progress: Progress | None = None
) -> IndependentEditor | None:
    """One delta per fact, each as if edited alone, computed many at a time; None unless ROME.

    ``choice`` is what `prepare_editor` returned for ``plan``. For ROME the deltas equal
    ``editor([fact])`` for each fact (up to float rounding), but the facts' target
    optimisations run as rows of one batch (``RomeConfig.target_batch`` facts each).

        editor, choice = prepare_editor(lm, facts, EditPlan("rome", layers=(6,)))
        each = independent_editor(lm, EditPlan("rome", layers=(6,)), choice)
        deltas = each(facts) if each is not None else [editor([f]) for f in facts]
    """
    if plan.method != "rome":
        return None
    return _rome_deltas(
        lm, plan, choice.layers[0], choice.stats, choice.templates, choice.projectors, progress
    )


def _rome_deltas(
    lm: LM,
    plan: EditPlan,
    layer: int,
    stats: Mapping[int, KeyStats],
    templates: Sequence[str],
    projectors: Mapping[int, Projector],
    progress: Progress | None,
) -> IndependentEditor:
    config = replace(plan.rome or RomeConfig(layer=layer), layer=layer)

    def rome_deltas(chosen: Sequence[Fact]) -> list[WeightDelta]:
        label = f"ROME, fact {chosen[0].case_id}" if len(chosen) == 1 else "ROME"
        steps = labelled(progress, label)
        deltas = compute_rome_batch(lm, chosen, stats[config.layer], config, templates, progress=steps)
        return [project_delta(delta, projectors) for delta in deltas] if projectors else deltas

    return rome_deltas


def _rome_editor(
    lm: LM,
    plan: EditPlan,
    layer: int,
    stats: Mapping[int, KeyStats],
    templates: Sequence[str],
    projectors: Mapping[int, Projector],
    progress: Progress | None,
) -> Editor:
    deltas = _rome_deltas(lm, plan, layer, stats, templates, projectors, progress)

    def rome_editor(chosen: Sequence[Fact]) -> WeightDelta:
        return combine(deltas(chosen), "rome")

    return rome_editor


def _alphaedit_editor(
    lm: LM,
    plan: EditPlan,
    layers: tuple[int, ...],
    projectors: Mapping[int, Projector],
    templates: Sequence[str],
    progress: Progress | None,
) -> Editor:
    config = replace(plan.alphaedit, layers=layers)
    if plan.null_space is not None:
        config = replace(config, null_space=plan.null_space)
    keys = EditedKeys()  # this run's K_p; a new editor starts with none

    def alphaedit_editor(chosen: Sequence[Fact]) -> WeightDelta:
        nonlocal keys
        steps = labelled(progress, "AlphaEdit")
        delta, after = compute_alphaedit(
            lm, chosen, projectors, config, templates, previous_keys=keys, progress=steps
        )
        if plan.sequential:
            keys = after
        return delta

    return alphaedit_editor
