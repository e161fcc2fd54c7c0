"""`memloc edit apply|eval|undo`: edit facts, measure edits, take them back.

Each command parses, calls one function of `memloc.edit.session`, and prints.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from memloc.cli.console import emit_json, emit_table, progress_bar, stderr, stdout
from memloc.cli.defaults import config_default
from memloc.cli.flags import with_flags
from memloc.cli.options import (
    METHOD_PANEL,
    OUTPUT_PANEL,
    DeviceOpt,
    FactsOpt,
    Format,
    FormatOpt,
    LimitFactsOpt,
    LMOptions,
    SeedOpt,
    lm_options,
    note_limit,
    parse_layers,
)
from memloc.core.errors import MemlocError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from memloc.core.lm.facts import Fact
    from memloc.core.lm.model import LM
    from memloc.edit.editors import EditPlan
    from memloc.edit.evaluate import EvalResult
    from memloc.edit.monitor import MonitorConfig
    from memloc.edit.probe_result import LayerProbe
    from memloc.edit.session import SavedEdits

PROBE = "memloc.edit.probe_result:ProbeConfig"

STATS = "memloc.edit.stats:StatsConfig"
# The edit monitor's advice names the fields of EditPlan, StatsConfig and MonitorConfig.
ADVICE_FIELDS = ("layers", "samples", "max_update_ratio")
EVAL = "memloc.edit.evaluate:EvalConfig"
NULL_SPACE = "memloc.edit.null_space:NullSpaceConfig"
LONG_ON_CPU = 500  # --samples from which a first rome/memit run on CPU is worth a warning
# Probe edits × model parameters from which a first --layers auto run on CPU is worth a
# warning: about 40 edits of SmolLM2-135M, each tens of seconds on a laptop CPU.
LONG_PROBE_ON_CPU = 5e9


class Method(str, Enum):
    rome = "rome"
    memit = "memit"
    kn = "kn"
    alphaedit = "alphaedit"


class Mode(str, Enum):
    single = "single"
    batch = "batch"
    sequential = "sequential"


MethodOpt = Annotated[
    Method,
    typer.Option(
        "--method",
        help="rome (one rank-one edit per fact), memit (all facts at once), kn, or alphaedit "
        "(memit confined to the null space of the key statistics).",
        rich_help_panel=METHOD_PANEL,
    ),
]
EditLayersOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--layers",
        help="auto: edit a few held-out facts of each relation at every candidate layer (memit, "
        "alphaedit: the span ending there) and keep the best by ES + PS with NS >= 0.7, cached per model "
        "and relation; trace: the causal-tracing peak; or layers: repeat, 3,4,5 or 3-5.",
        show_default="auto",
        rich_help_panel=METHOD_PANEL,
    ),
]
ProbeLayersOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--probe-layers",
        help="--layers auto: the candidate layers to probe (3,4,5 or 3-5).",
        show_default="every layer up to 8, else 8 from 10% to 50% of the depth",
        rich_help_panel=METHOD_PANEL,
    ),
]
ProbeFactsOpt = Annotated[
    int,
    typer.Option(
        "--probe-facts",
        help="--layers auto: probe facts per relation, taken from the facts of the file not being edited.",
        rich_help_panel=METHOD_PANEL,
    ),
]
ProbeStepsOpt = Annotated[
    int,
    typer.Option(
        "--probe-steps",
        help="--layers auto: target-optimisation steps of each probe edit (the real edits keep their own); "
        "more rate the layers that need them fairly, at that much more probe time.",
        rich_help_panel=METHOD_PANEL,
    ),
]
CorpusOpt = Annotated[
    str,
    typer.Option(
        "--corpus",
        help="Key statistics from 'generated' text or a local .txt/.jsonl corpus.",
        rich_help_panel=METHOD_PANEL,
    ),
]
SamplesOpt = Annotated[
    int,
    typer.Option(
        "--samples",
        help="Texts for the key statistics of rome/memit, cached per model and layer. The first "
        "computation with the default is a long run on CPU (the model writes and reads every text); "
        "try --samples 100 first.",
        rich_help_panel=METHOD_PANEL,
    ),
]

NullSpaceOpt = Annotated[
    bool,
    typer.Option(
        "--null-space",
        help="rome/memit: project each update onto the null space of the key statistics "
        "(ΔW ← ΔW P, as AlphaEdit), so the keys they were taken over keep their outputs.",
        rich_help_panel=METHOD_PANEL,
    ),
]
NullThresholdOpt = Annotated[
    float,
    typer.Option(
        "--null-space-threshold",
        help="alphaedit and --null-space: an eigen-direction of C is free to edit when its eigenvalue "
        "is below this share of the largest.",
        rich_help_panel=METHOD_PANEL,
    ),
]


def _edit_facts(facts: Path, limit: int | None) -> list[Fact]:
    """The facts to edit, checked before the model loads, so bad facts fail fast."""
    from memloc.core.lm.facts import load_facts, require_edit_targets

    loaded = load_facts(facts, limit=limit)
    require_edit_targets(loaded)
    note_limit(limit, len(loaded), f"facts in {facts.name}")
    return loaded


def _pool(facts: Path, plan: EditPlan) -> list[Fact]:
    """The whole fact file, where the edit probe of --layers auto finds held-out facts."""
    from memloc.core.lm.facts import load_facts

    return load_facts(facts) if plan.layers is None and plan.layer_rule == "probe" else []


def _show_probe(probe: LayerProbe | None) -> None:
    if probe is None:
        return
    emit_table(
        f"edit probe: {probe.method} at layers {list(probe.layers)} ({probe.rule})",
        [
            {
                "layer": s.layer,
                "layers": ",".join(map(str, s.layers)),
                "ES": s.es,
                "PS": s.ps,
                "NS": s.ns,
                "margin": s.margin,
                "chosen": "*" if s.layer == probe.layer else "",
            }
            for s in probe.scores
        ],
    )
    for r in probe.relations:
        held = f"{len(r.facts) - r.edited_overlap} held out" + (
            f", {r.edited_overlap} also edited (too few others in the file)" if r.edited_overlap else ""
        )
        source = "from the cache" if r.cached else f"{r.seconds:.1f} s"
        stderr.print(f"probe of relation {r.relation}: facts {', '.join(r.facts)} ({held}; {source})")
    if not probe.floor_met:
        stderr.print("memloc: warning: no candidate kept NS at the probe's floor; chose by ES + PS alone")


def _warn_probe_cost(model: LM, plan: EditPlan, facts: list[Fact]) -> None:
    """On CPU, say how many edits the edit probe makes, and how to make fewer, before it starts."""
    if (
        plan.layers is not None
        or plan.layer_rule != "probe"
        or plan.method == "kn"
        or model.device.type != "cpu"
    ):
        return
    for layer in plan.probe.candidates:  # a wrong layer is the one line to show, not a cost
        model.adapter.check_layer(layer)
    candidates = len(plan.probe.layers_for(model.n_layers))
    relations = len({f.relation_key for f in facts})
    edits = candidates * relations * (1 if plan.method in ("memit", "alphaedit") else plan.probe.facts)
    if edits * sum(p.numel() for p in model.model.parameters()) >= LONG_PROBE_ON_CPU:
        stderr.print(
            f"memloc: warning: --layers auto makes {edits} probe edits ({candidates} candidate layers, "
            f"{relations} relations) the first time, a long run on CPU (then it is cached); "
            "narrow them with --probe-layers or --probe-facts, or pass --layers"
        )


def _plan(
    method: Method,
    layers: list[str] | None,
    corpus: str,
    samples: int,
    seed: int,
    null_space: bool = False,
    threshold: float = 1e-2,
    probe_layers: list[str] | None = None,
    probe_facts: int = 3,
    probe_steps: int = 10,
) -> EditPlan:
    from memloc.edit.editors import EditPlan
    from memloc.edit.null_space import NullSpaceConfig
    from memloc.edit.probe_result import ProbeConfig
    from memloc.edit.stats import StatsConfig

    if null_space and method not in (Method.rome, Method.memit):
        raise MemlocError(
            f"--null-space projects rome and memit updates; {method.value} "
            + ("is always null-space constrained" if method is Method.alphaedit else "has none to project")
        )
    rule = "trace" if layers == ["trace"] else "probe"
    chosen = None if not layers or layers in (["auto"], ["trace"]) else tuple(parse_layers(layers))
    if chosen is not None or rule == "trace":
        for given, flag in (
            (probe_layers, "--probe-layers"),
            (probe_steps != ProbeConfig.steps, "--probe-steps"),
        ):
            if given:
                raise MemlocError(f"{flag} belongs to --layers auto")
    candidates = tuple(dict.fromkeys(parse_layers(probe_layers))) if probe_layers else ()
    space = NullSpaceConfig(threshold=threshold) if null_space or method is Method.alphaedit else None
    stats = StatsConfig(corpus=corpus, samples=samples, seed=seed)
    probe = ProbeConfig(facts=probe_facts, candidates=candidates, steps=probe_steps)
    return EditPlan(method.value, chosen, layer_rule=rule, probe=probe, stats=stats, null_space=space)


@lm_options
def apply_command(
    lm: LMOptions,
    method: MethodOpt,
    facts: FactsOpt,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="New folder for the edited model and its ledger.",
            show_default=False,
            rich_help_panel=OUTPUT_PANEL,
        ),
    ],
    layers: EditLayersOpt = None,
    corpus: CorpusOpt = config_default(STATS, "corpus"),
    samples: SamplesOpt = config_default(STATS, "samples"),
    max_update_ratio: Annotated[
        float | None,
        typer.Option(
            "--max-update-ratio",
            help="Refuse an edit whose ||ΔW|| exceeds this share of ||W|| (default: rome 0.5, memit 1.0, kn none).",
            show_default=False,
            rich_help_panel=METHOD_PANEL,
        ),
    ] = None,
    null_space: NullSpaceOpt = False,
    null_threshold: NullThresholdOpt = config_default(NULL_SPACE, "threshold"),
    probe_layers: ProbeLayersOpt = None,
    probe_facts: ProbeFactsOpt = config_default(PROBE, "facts"),
    probe_steps: ProbeStepsOpt = config_default(PROBE, "steps"),
    limit: LimitFactsOpt = None,
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Edit facts and write the edited model to a NEW folder with a ledger (undo with 'edit undo')."""
    from memloc.core.paths import writable_folder
    from memloc.edit.session import monitor_for, require_new_folder

    loaded = _edit_facts(facts, limit)
    monitor = monitor_for(method.value, max_update_ratio)
    plan = _plan(
        method,
        layers,
        corpus,
        samples,
        seed,
        null_space,
        null_threshold,
        probe_layers,
        probe_facts,
        probe_steps,
    )
    pool = _pool(facts, plan)
    require_new_folder(writable_folder(out))
    model = lm.load()
    _warn_probe_cost(model, plan, loaded)
    saved = _save_with_progress(model, loaded, plan, monitor, out, pool)
    if fmt is Format.json:
        emit_json(saved.to_dict())
        return
    _show_probe(saved.outcome.choice.probe)
    _show_saved(saved)


def _save_with_progress(
    model: LM, facts: list[Fact], plan: EditPlan, monitor: MonitorConfig, out: Path, pool: Sequence[Fact]
) -> SavedEdits:
    """`save_edits` under a progress bar, with refusals as warnings and a total refusal's advice in flags."""
    from memloc.core.lm.loading import quiet_transformers
    from memloc.edit.session import save_edits

    try:
        with progress_bar(f"edit {plan.method}") as update, quiet_transformers():
            return save_edits(
                model,
                facts,
                plan,
                monitor,
                out,
                progress=update,
                notify=lambda r: stderr.print(f"memloc: warning: {with_flags(r.warning(), ADVICE_FIELDS)}"),
                pool=pool,
            )
    except MemlocError as exc:  # every edit refused: the first refusal's advice, with flags
        if exc.field is not None:
            raise
        raise MemlocError(with_flags(str(exc), ADVICE_FIELDS)) from exc


def _show_saved(saved: SavedEdits) -> None:
    """The rewrite prompts' probabilities before and after, and where the edited model went."""
    choice = saved.outcome.choice
    emit_table(
        f"{choice.method} edits at layers {list(choice.layers)} (rewrite prompt)",
        [
            {
                "case_id": b.case_id,
                "prompt": b.prompt,
                "P(true) before": b.p_true,
                "P(new) before": b.p_new,
                "P(true) after": a.p_true,
                "P(new) after": a.p_new,
            }
            for b, a in zip(saved.before, saved.after, strict=True)
        ],
    )
    stderr.print(f"edited model and ledger: {saved.out}  (undo: memloc edit undo {saved.out} --out <folder>)")


EvalMethodOpt = Annotated[
    Method | None,
    typer.Option("--method", help="Edit with this method, then measure.", rich_help_panel=METHOD_PANEL),
]
ModeOpt = Annotated[
    Mode,
    typer.Option(
        "--mode",
        help="single: edit one fact, measure it, restore it, then the next; batch: edit all facts at "
        "once, then measure; sequential: edit the facts one batch of --batch-size after another "
        "without restoring, measuring every fact edited so far every --every batches.",
        rich_help_panel=METHOD_PANEL,
    ),
]
BatchSizeOpt = Annotated[
    int,
    typer.Option(
        "--batch-size", help="Sequential mode: facts per batch of edits.", rich_help_panel=METHOD_PANEL
    ),
]
EveryOpt = Annotated[
    int,
    typer.Option(
        "--every",
        help="Sequential mode: measure every fact edited so far after this many batches (and after the last).",
        rich_help_panel=METHOD_PANEL,
    ),
]
FluencyTokensOpt = Annotated[
    int, typer.Option("--fluency-tokens", help="Tokens generated per fluency prompt.")
]
EvalOutOpt = Annotated[
    Path | None,
    typer.Option("--out", help="Folder for eval_report.json and the report.", rich_help_panel=OUTPUT_PANEL),
]


@lm_options
def eval_command(
    lm: LMOptions,
    facts: FactsOpt,
    method: EvalMethodOpt = None,
    mode: ModeOpt = Mode.single,
    layers: EditLayersOpt = None,
    corpus: CorpusOpt = config_default(STATS, "corpus"),
    samples: SamplesOpt = config_default(STATS, "samples"),
    null_space: NullSpaceOpt = False,
    null_threshold: NullThresholdOpt = config_default(NULL_SPACE, "threshold"),
    batch_size: BatchSizeOpt = 1,
    every: EveryOpt = 1,
    probe_layers: ProbeLayersOpt = None,
    probe_facts: ProbeFactsOpt = config_default(PROBE, "facts"),
    probe_steps: ProbeStepsOpt = config_default(PROBE, "steps"),
    fluency_tokens: FluencyTokensOpt = config_default(EVAL, "generation_tokens"),
    out: EvalOutOpt = None,
    limit: LimitFactsOpt = None,
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """CounterFact scores before and after editing (or of an edited model folder and its base)."""
    from memloc.edit.eval_report import check_eval_out, save_eval_report
    from memloc.edit.evaluate import EvalConfig
    from memloc.edit.sequential import SequentialConfig
    from memloc.edit.session import evaluate_folder, evaluate_plan

    out = out if out is None else check_eval_out(out)
    loaded = _edit_facts(facts, limit)
    config = EvalConfig(generation_tokens=fluency_tokens)
    sequential = SequentialConfig(batch_size=batch_size, every=every)
    if mode is not Mode.sequential and (batch_size != 1 or every != 1):
        raise MemlocError("--batch-size and --every belong to --mode sequential")
    plan = (
        None
        if method is None
        else _plan(
            method,
            layers,
            corpus,
            samples,
            seed,
            null_space,
            null_threshold,
            probe_layers,
            probe_facts,
            probe_steps,
        )
    )
    pool = [] if plan is None else _pool(facts, plan)
    if plan is None and null_space:
        raise MemlocError("--null-space needs --method rome or memit")
    model = lm.load()
    if plan is not None:
        _warn_probe_cost(model, plan, loaded)
    _warn_stats_cost(model, method, samples)
    with progress_bar("eval") as update:
        if plan is not None:
            result = evaluate_plan(
                model, loaded, plan, mode.value, config, sequential=sequential, progress=update, pool=pool
            )
        else:
            result = evaluate_folder(model, lm.model, loaded, config)
    if out is not None:
        page = save_eval_report(out, lm.model, result, config, seed, facts)
        stderr.print(f"report: {page}")
    if fmt is Format.json:
        emit_json(result.to_dict())
        return
    _print_eval(result)


def _warn_stats_cost(model: LM, method: Method | None, samples: int) -> None:
    if (
        method in (Method.rome, Method.memit, Method.alphaedit)
        and model.device.type == "cpu"
        and samples >= LONG_ON_CPU
    ):
        stderr.print(
            f"memloc: warning: key statistics over {samples} texts take long on CPU the first time "
            "(then they are cached); --samples 100 is enough to try"
        )


def _print_eval(result: EvalResult) -> None:
    from memloc.edit.evaluate import METRIC_MEANINGS, METRICS

    _show_probe(result.layer_probe)
    emit_table(
        "CounterFact metrics",
        [{"metric": k, "pre": result.pre[k], "post": result.post[k]} for k in METRICS],
    )
    for metric in METRICS:
        stdout.print(f"{metric}: {METRIC_MEANINGS[metric]}")
    stdout.print(f"seconds per edit: {result.seconds_per_edit:.2f}")
    if result.unedited:
        stderr.print(f"not edited (the method found nothing to change): {', '.join(result.unedited)}")


def undo_command(
    folder: Annotated[
        Path, typer.Argument(help="A folder written by 'memloc edit apply'.", show_default=False)
    ],
    out: Annotated[
        Path, typer.Option("--out", help="New folder for the restored base model.", show_default=False)
    ],
    device: DeviceOpt = "cpu",
    fmt: FormatOpt = Format.table,
) -> None:
    """Restore the base weights bit for bit from the ledger, into a new folder."""
    from memloc.core.lm.loading import quiet_transformers
    from memloc.core.paths import writable_folder
    from memloc.edit.session import check_undo_target, restore_into

    check_undo_target(folder, writable_folder(out))  # one clear line before a model is loaded
    with quiet_transformers():
        restored = restore_into(LMOptions(str(folder), device=device).load(), folder, out)
    if fmt is Format.json:
        emit_json(restored.to_dict())
        return
    stdout.print(
        f"restored {restored.edits_undone} edit(s); weights hash {restored.restored_hash[:16]} "
        f"equals the base hash: {out}"
    )
