"""`memloc locate trace|suppress|enhance` and `locate neurons --model`: facts in language models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from memloc.cli.console import emit_json, emit_table, progress_bar, stderr
from memloc.cli.lm_loader import load_lm
from memloc.cli.options import (
    DeviceOpt,
    DocStartOpt,
    Dtype,
    DtypeOpt,
    FactsOpt,
    Format,
    FormatOpt,
    LimitFactsOpt,
    ModelOpt,
    SeedOpt,
    TrustRemoteCodeOpt,
    parse_layers,
)
from memloc.core.errors import MemlocError
from memloc.core.lm.facts import Fact, load_facts
from memloc.core.lm.model import LM
from memloc.locate.lm.fact_runs import locate_intervention, locate_knowledge_neurons, locate_trace
from memloc.locate.lm.interventions import InterventionConfig
from memloc.locate.lm.knowledge_neurons import KNConfig
from memloc.locate.lm.tracing import TRACE_KINDS, TraceConfig

FactsOutOpt = Annotated[
    Path | None,
    typer.Option("--out", help="Folder for results and report; a rerun there skips finished facts."),
]


def load_inputs(
    model: str | None,
    facts: Path | None,
    device: str,
    dtype: Dtype,
    trust_remote_code: bool,
    limit: int | None,
    doc_start: str = "auto",
) -> tuple[LM, list[Fact]]:
    """Facts first (cheap to validate), then the model."""
    if model is None or facts is None:
        raise MemlocError("give both --model (a language model) and --facts (a fact file)")
    loaded = load_facts(facts, limit=limit)
    lm = load_lm(model, device, dtype, trust_remote_code, doc_start)
    return lm, loaded


def trace_command(
    model: ModelOpt,
    facts: FactsOpt,
    kinds: Annotated[
        list[str] | None, typer.Option("--kind", help=f"Restore kind (repeatable): {', '.join(TRACE_KINDS)}.")
    ] = None,
    samples: Annotated[int, typer.Option("--samples", help="Corrupted copies per fact.")] = 10,
    noise: Annotated[
        float, typer.Option("--noise", help="Noise std as a multiple of the embeddings' std.")
    ] = 3.0,
    window: Annotated[
        int, typer.Option("--window", help="Layers restored around each MLP/attention cell.")
    ] = 10,
    batch: Annotated[int, typer.Option("--batch", help="Restored rows per forward pass.")] = 256,
    last_subject: Annotated[
        bool,
        typer.Option(
            "--last-subject-only", help="Trace only each fact's last subject token (enough for best_layer)."
        ),
    ] = False,
    limit: LimitFactsOpt = None,
    out: FactsOutOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = Dtype.float32,
    trust_remote_code: TrustRemoteCodeOpt = False,
    doc_start: DocStartOpt = "auto",
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Causal tracing: how much of the answer each (token, layer) restores; picks best_layer."""
    config = TraceConfig(
        samples=samples,
        noise=noise,
        window=window,
        kinds=tuple(kinds or TRACE_KINDS),
        seed=seed,
        batch_size=batch,
    )
    lm, loaded = load_inputs(model, facts, device, dtype, trust_remote_code, limit, doc_start)
    with progress_bar("trace") as update:
        report = locate_trace(lm, loaded, facts, config, out, update, last_subject_only=last_subject)
    if out is not None:
        _write_report(out)
    if fmt is Format.json:
        emit_json(report.results)
        return
    rows = [
        {
            "case_id": f["case_id"],
            "prompt": f["prompt"],
            "target": f["target"],
            "clean_p": f["clean_prob"],
            "corrupted_p": f["corrupted_prob"],
            "best_layer": f["best_layer"],
        }
        for f in report.results["facts"]
    ]
    emit_table("causal tracing (best_layer: peak MLP effect at the last subject token)", rows)
    stderr.print(f"best_layer over {len(rows)} facts: {report.results['best_layer']}")


def _write_report(out: Path) -> None:
    from memloc.locate.lm.fact_report import write_fact_report

    _md, page = write_fact_report(out)
    stderr.print(f"report: {page}")


KNStepsOpt = Annotated[int, typer.Option("--steps", help="Integrated-gradient steps (left Riemann sum).")]
KNShareOpt = Annotated[
    float, typer.Option("--share", help="Refined set: share of a fact's prompts a neuron needs.")
]


def kn_config(
    steps: int,
    coarse: float,
    share: float,
    relation_share: float,
    layers: list[str] | None,
    batch: int | None,
) -> KNConfig:
    return KNConfig(
        steps=steps,
        coarse=coarse,
        share=share,
        relation_share=relation_share,
        layers=tuple(parse_layers(layers)) if layers else None,
        batch_size=batch,
    )


def knowledge_neurons_command(
    model: str,
    facts: Path | None,
    config: KNConfig,
    limit: int | None,
    out: Path | None,
    device: str,
    dtype: Dtype,
    trust_remote_code: bool,
    fmt: Format,
    doc_start: str = "auto",
) -> None:
    """`memloc locate neurons --model M --facts F`: knowledge neurons of each fact."""
    lm, loaded = load_inputs(model, facts, device, dtype, trust_remote_code, limit, doc_start)
    config.layer_list(lm)  # one clear line for a layer out of range
    with progress_bar("knowledge neurons") as update:
        report = locate_knowledge_neurons(lm, loaded, facts, config, out, update)
    if out is not None:
        _write_report(out)
    if fmt is Format.json:
        emit_json(
            {
                "facts": [
                    {
                        "case_id": r["case_id"],
                        "relation": r["relation"],
                        "neurons": r["neurons"],
                        "per_layer": r["per_layer"],
                    }
                    for r in report.results["facts"]
                ],
                "relations": report.results["relations"],
                "sharing": report.results["sharing"],
                "metrics": report.metrics,
            }
        )
        return
    emit_table(
        "knowledge neurons per fact",
        [
            {
                "case_id": r["case_id"],
                "target": r["target"],
                "neurons": len(r["neurons"]),
                "layers": ", ".join(f"{k}:{v}" for k, v in r["per_layer"].items()),
            }
            for r in report.results["facts"]
        ],
    )
    stderr.print(
        f"mean {report.metrics['mean_neurons']:.1f} neurons per fact; per layer {report.metrics['neurons_per_layer']}"
    )


def _intervention_command(mode: str):
    def command(
        model: ModelOpt,
        facts: FactsOpt,
        steps: KNStepsOpt = 20,
        share: KNShareOpt = 0.7,
        factor: Annotated[
            float, typer.Option("--factor", help="enhance: multiply activations by this.")
        ] = 2.0,
        controls: Annotated[int, typer.Option("--controls", help="Unrelated control facts per fact.")] = 5,
        limit: LimitFactsOpt = None,
        out: FactsOutOpt = None,
        device: DeviceOpt = "auto",
        dtype: DtypeOpt = Dtype.float32,
        trust_remote_code: TrustRemoteCodeOpt = False,
        doc_start: DocStartOpt = "auto",
        seed: SeedOpt = 0,
        fmt: FormatOpt = Format.table,
    ) -> None:
        kn = KNConfig(steps=steps, share=share)
        config = InterventionConfig(mode=mode, factor=factor, controls=controls, seed=seed)
        lm, loaded = load_inputs(model, facts, device, dtype, trust_remote_code, limit, doc_start)
        with progress_bar(mode) as update:
            report = locate_intervention(lm, loaded, facts, kn, config, out, update)
        if out is not None:
            _write_report(out)
        if fmt is Format.json:
            emit_json(report.results)
            return
        emit_table(
            f"{mode}: P(target) per fact",
            [
                {
                    "case_id": f["case_id"],
                    "neurons": len(f["neurons"]),
                    "P before": f["p_before"],
                    "P own": f["p_own"],
                    "P random": f["p_random"],
                    "controls change": f["control_change"],
                }
                for f in report.results["facts"]
            ],
        )
        emit_table("mean relative change of P(target)", [report.results["summary"]])

    what = "Zero" if mode == "suppress" else "Amplify"
    command.__doc__ = (
        f"{what} each fact's own knowledge neurons; compare with random neurons and unrelated control facts."
    )
    return command


suppress_command = _intervention_command("suppress")
enhance_command = _intervention_command("enhance")
