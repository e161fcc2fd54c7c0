"""`memloc locate trace|suppress|enhance|knowledge-neurons`: facts in language models."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from memloc.cli.console import emit_json, emit_table, progress_bar, stderr
from memloc.cli.defaults import config_default
from memloc.cli.options import (
    METHOD_PANEL,
    OUTPUT_PANEL,
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

if TYPE_CHECKING:
    from memloc.core.lm.facts import Fact
    from memloc.core.lm.model import LM
    from memloc.locate.lm.fact_results import KNRun

TRACE = "memloc.locate.lm.tracing:TraceConfig"
KN = "memloc.locate.lm.knowledge_neurons:KNConfig"
INTERVENTION = "memloc.locate.lm.interventions:InterventionConfig"


class TraceKind(str, Enum):
    """The kinds causal tracing restores (``TRACE_KINDS``; a test keeps them equal)."""

    hidden = "hidden"
    mlp = "mlp"
    attn = "attn"


FactsOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="Folder for results and report; a rerun there skips finished facts.",
        rich_help_panel=OUTPUT_PANEL,
    ),
]


def load_inputs(lm: LMOptions, facts: Path, limit: int | None) -> tuple[LM, list[Fact]]:
    """Facts first (cheap to validate), then the model."""
    from memloc.core.lm.facts import load_facts

    loaded = load_facts(facts, limit=limit)
    note_limit(limit, len(loaded), f"facts in {facts.name}")
    return lm.load(), loaded


@lm_options
def trace_command(
    lm: LMOptions,
    facts: FactsOpt,
    kinds: Annotated[
        list[str] | None,
        typer.Option(
            "--kind",
            help=f"Restore kind (repeatable): {', '.join(k.value for k in TraceKind)}.",
            rich_help_panel=METHOD_PANEL,
        ),
    ] = None,
    samples: Annotated[
        int, typer.Option("--samples", help="Corrupted copies per fact.", rich_help_panel=METHOD_PANEL)
    ] = config_default(TRACE, "samples"),
    noise: Annotated[
        float,
        typer.Option(
            "--noise", help="Noise std as a multiple of the embeddings' std.", rich_help_panel=METHOD_PANEL
        ),
    ] = config_default(TRACE, "noise"),
    window: Annotated[
        int,
        typer.Option(
            "--window", help="Layers restored around each MLP/attention cell.", rich_help_panel=METHOD_PANEL
        ),
    ] = config_default(TRACE, "window"),
    batch: Annotated[
        int, typer.Option("--batch", help="Restored rows per forward pass.", rich_help_panel=METHOD_PANEL)
    ] = config_default(TRACE, "batch_size"),
    last_subject: Annotated[
        bool,
        typer.Option(
            "--last-subject-only", help="Trace only each fact's last subject token (enough for best_layer)."
        ),
    ] = False,
    limit: LimitFactsOpt = None,
    out: FactsOutOpt = None,
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Causal tracing: how much of the answer each (token, layer) restores; picks best_layer."""
    from memloc.locate.lm.fact_runs import locate_trace
    from memloc.locate.lm.tracing import TRACE_KINDS, TraceConfig

    config = TraceConfig(
        samples=samples,
        noise=noise,
        window=window,
        kinds=tuple(kinds or TRACE_KINDS),
        seed=seed,
        batch_size=batch,
    )
    model, loaded = load_inputs(lm, facts, limit)
    with progress_bar("trace") as update:
        run = locate_trace(model, loaded, facts, config, out, update, last_subject_only=last_subject)
    if out is not None:
        _write_report(out)
    if fmt is Format.json:
        emit_json(run.to_dict())
        return
    rows = [
        {
            "case_id": t.case_id,
            "prompt": t.prompt,
            "target": t.target,
            "clean_p": t.clean_prob,
            "corrupted_p": t.corrupted_prob,
            "best_layer": t.best_layer,
        }
        for t in run.traces
    ]
    emit_table("causal tracing (best_layer: peak MLP effect at the last subject token)", rows)
    stderr.print(f"best_layer over {len(rows)} facts: {run.best_layer}")


def _write_report(out: Path) -> None:
    from memloc.locate.lm.fact_report import write_fact_report

    _md, page = write_fact_report(out)
    stderr.print(f"report: {page}")


KNStepsOpt = Annotated[
    int,
    typer.Option(
        "--steps", help="Integrated-gradient steps (left Riemann sum).", rich_help_panel=METHOD_PANEL
    ),
]
KNShareOpt = Annotated[
    float,
    typer.Option(
        "--share", help="Refined set: share of a fact's prompts a neuron needs.", rich_help_panel=METHOD_PANEL
    ),
]


@lm_options
def knowledge_neurons_command(
    lm: LMOptions,
    facts: FactsOpt,
    steps: KNStepsOpt = config_default(KN, "steps"),
    coarse: Annotated[
        float,
        typer.Option("--coarse", help="Coarse threshold × max attribution.", rich_help_panel=METHOD_PANEL),
    ] = config_default(KN, "coarse"),
    share: KNShareOpt = config_default(KN, "share"),
    relation_share: Annotated[
        float,
        typer.Option(
            "--relation-share",
            help="Share of a relation's facts for relation neurons.",
            rich_help_panel=METHOD_PANEL,
        ),
    ] = config_default(KN, "relation_share"),
    layers: Annotated[
        list[str] | None,
        typer.Option(
            "--layers", help="Only these layers (repeat, 3,4 or 3-5).", rich_help_panel=METHOD_PANEL
        ),
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option(
            "--batch",
            help="Integrated-gradient rows per pass (default: all steps of a prompt at once).",
            rich_help_panel=METHOD_PANEL,
        ),
    ] = config_default(KN, "batch_size"),
    limit: LimitFactsOpt = None,
    out: FactsOutOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Knowledge neurons of each fact (integrated gradients, Dai et al. 2022). Resumable with --out."""
    from memloc.locate.lm.fact_runs import locate_knowledge_neurons
    from memloc.locate.lm.knowledge_neurons import KNConfig

    config = KNConfig(
        steps=steps,
        coarse=coarse,
        share=share,
        relation_share=relation_share,
        layers=tuple(parse_layers(layers)) if layers else None,
        batch_size=batch,
    )
    model, loaded = load_inputs(lm, facts, limit)
    config.layer_list(model)  # one clear line for a layer out of range
    with progress_bar("knowledge neurons") as update:
        run = locate_knowledge_neurons(model, loaded, facts, config, out, update)
    if out is not None:
        _write_report(out)
    _show_knowledge_neurons(run, fmt)


def _show_knowledge_neurons(run: KNRun, fmt: Format) -> None:
    metrics = run.metrics
    if fmt is Format.json:
        emit_json(
            {
                "facts": [
                    {
                        "case_id": f.case_id,
                        "relation": f.relation,
                        "neurons": f.neurons,
                        "per_layer": dict(sorted(f.per_layer.items())),
                    }
                    for f in run.facts
                ],
                "relations": run.relations,
                "sharing": run.sharing.to_dict(),
                "metrics": metrics.to_dict(),
            }
        )
        return
    emit_table(
        "knowledge neurons per fact",
        [
            {
                "case_id": f.case_id,
                "target": f.target,
                "neurons": len(f.neurons),
                "layers": ", ".join(f"{k}:{v}" for k, v in sorted(f.per_layer.items())),
            }
            for f in run.facts
        ],
    )
    per_layer = {str(k): v for k, v in metrics.neurons_per_layer.items()}
    stderr.print(f"mean {metrics.mean_neurons:.1f} neurons per fact; per layer {per_layer}")


def _intervention_command(mode: str):
    def command(
        lm: LMOptions,
        facts: FactsOpt,
        steps: KNStepsOpt = config_default(KN, "steps"),
        share: KNShareOpt = config_default(KN, "share"),
        factor: Annotated[
            float,
            typer.Option(
                "--factor", help="enhance: multiply activations by this.", rich_help_panel=METHOD_PANEL
            ),
        ] = config_default(INTERVENTION, "factor"),
        controls: Annotated[
            int,
            typer.Option(
                "--controls", help="Unrelated control facts per fact.", rich_help_panel=METHOD_PANEL
            ),
        ] = config_default(INTERVENTION, "controls"),
        limit: LimitFactsOpt = None,
        out: FactsOutOpt = None,
        seed: SeedOpt = 0,
        fmt: FormatOpt = Format.table,
    ) -> None:
        from memloc.locate.lm.fact_runs import locate_intervention
        from memloc.locate.lm.interventions import InterventionConfig
        from memloc.locate.lm.knowledge_neurons import KNConfig

        kn = KNConfig(steps=steps, share=share)
        config = InterventionConfig(mode=mode, factor=factor, controls=controls, seed=seed)
        model, loaded = load_inputs(lm, facts, limit)
        with progress_bar(mode) as update:
            run = locate_intervention(model, loaded, facts, kn, config, out, update)
        if out is not None:
            _write_report(out)
        if fmt is Format.json:
            emit_json(run.to_dict())
            return
        emit_table(
            f"{mode}: P(target) per fact",
            [
                {
                    "case_id": f.case_id,
                    "neurons": len(f.neurons),
                    "P before": f.before,
                    "P own": f.own,
                    "P random": f.random,
                    "controls change": f.control_change,
                }
                for f in run.facts
            ],
        )
        emit_table("mean relative change of P(target)", [run.summary().to_dict()])

    what = "Zero" if mode == "suppress" else "Amplify"
    command.__doc__ = (
        f"{what} each fact's own knowledge neurons; compare with random neurons and unrelated control facts."
    )
    return lm_options(command)


suppress_command = _intervention_command("suppress")
enhance_command = _intervention_command("enhance")
