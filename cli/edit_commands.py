"""`memloc edit apply|eval|undo`: edit facts, measure edits, take them back."""

from __future__ import annotations

import math
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from memloc.cli.console import emit_json, emit_table, progress_bar, stderr, stdout
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
from memloc.core.lm.facts import load_facts, require_edit_targets
from memloc.core.lm.loading import load_language_model
from memloc.core.lm.model import encode, target_prob
from memloc.core.render import write_report
from memloc.core.report import Report, provenance
from memloc.edit.delta import weights_hash
from memloc.edit.editors import EditPlan, prepare_editor
from memloc.edit.eval_report import eval_section
from memloc.edit.evaluate import METRICS, MODES, EvalConfig, evaluate_edits, measure, summarize
from memloc.edit.ledger import read_ledger, save_edited, undo
from memloc.edit.monitor import (
    DEFAULT_UPDATE_RATIO,
    CollapseError,
    MonitorConfig,
    checked_apply,
    generation_entropy,
)
from memloc.edit.stats import StatsConfig


class Method(str, Enum):
    rome = "rome"
    memit = "memit"
    kn = "kn"


Mode = Enum("Mode", {m: m for m in MODES}, type=str)

MethodOpt = Annotated[
    Method,
    typer.Option("--method", help="rome (one rank-one edit per fact), memit (all facts at once) or kn."),
]
EditLayersOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--layers", help="auto (causal tracing), or layers: repeat, 3,4,5 or 3-5.", show_default="auto"
    ),
]
CorpusOpt = Annotated[
    str, typer.Option("--corpus", help="Key statistics from 'generated' text or a local .txt/.jsonl corpus.")
]
SamplesOpt = Annotated[int, typer.Option("--samples", help="Texts for the key statistics.")]


def _plan(method: Method, layers: list[str] | None, corpus: str, samples: int, seed: int) -> EditPlan:
    chosen = None if not layers or layers == ["auto"] else tuple(parse_layers(layers))
    return EditPlan(method.value, chosen, stats=StatsConfig(corpus=corpus, samples=samples, seed=seed))


def _rewrite_probs(lm, facts) -> list[dict]:
    rows = []
    for fact in facts:
        true = encode(lm.tokenizer, fact.text, fact.subject, fact.target_true)
        new = encode(lm.tokenizer, fact.text, fact.subject, fact.target_new)
        rows.append(
            {
                "case_id": fact.case_id,
                "prompt": fact.text,
                "p_true": target_prob(lm.model, true, lm.device),
                "p_new": target_prob(lm.model, new, lm.device),
            }
        )
    return rows


def apply_command(
    method: MethodOpt,
    model: ModelOpt,
    facts: FactsOpt,
    out: Annotated[
        Path,
        typer.Option("--out", help="New folder for the edited model and its ledger.", show_default=False),
    ],
    layers: EditLayersOpt = None,
    corpus: CorpusOpt = "generated",
    samples: SamplesOpt = 1000,
    max_update_ratio: Annotated[
        float | None,
        typer.Option(
            "--max-update-ratio",
            help="Refuse an edit whose ||ΔW|| exceeds this share of ||W|| (default: rome 0.5, memit 1.0, kn none).",
            show_default=False,
        ),
    ] = None,
    limit: LimitFactsOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = Dtype.float32,
    trust_remote_code: TrustRemoteCodeOpt = False,
    doc_start: DocStartOpt = "auto",
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """Edit facts and write the edited model to a NEW folder with a ledger (undo with 'edit undo')."""
    loaded = load_facts(facts, limit=limit)
    require_edit_targets(loaded)
    if out.exists() and any(out.iterdir()):
        raise MemlocError(f"{out} already exists and is not empty; choose another --out or remove it")
    plan = _plan(method, layers, corpus, samples, seed)
    lm = load_lm(model, device, dtype, trust_remote_code, doc_start)
    base = weights_hash(lm.model)
    before = _rewrite_probs(lm, loaded)
    ratio = DEFAULT_UPDATE_RATIO[method.value] if max_update_ratio is None else max_update_ratio
    monitor = MonitorConfig(max_update_ratio=ratio)
    started = time.perf_counter()
    deltas, handles, refused, checks = [], [], [], []
    with progress_bar(f"edit {method.value}") as update:
        editor, info = prepare_editor(lm, loaded, plan, update)
        baseline = generation_entropy(lm, monitor)
        groups = [loaded] if method is Method.memit else [[f] for f in loaded]
        for i, group in enumerate(groups):
            delta = editor(group)
            if "unedited" in delta.info:
                refused.append({"case_ids": list(delta.case_ids), "reason": delta.info["unedited"]})
                stderr.print(
                    f"memloc: warning: fact {delta.case_ids[0]}: {delta.info['unedited']}; not edited"
                )
                update(i + 1, len(groups), "editing")
                continue
            try:
                handle, check = checked_apply(lm, delta, monitor, baseline)
            except CollapseError as exc:
                refused.append({"case_ids": list(delta.case_ids), "reason": str(exc)})
                stderr.print(f"memloc: warning: {exc}")
            else:
                deltas.append(delta)
                handles.append(handle)
                checks.append(check)
            update(i + 1, len(groups), "editing")
    if not deltas:
        raise MemlocError(f"every edit was refused; the first reason: {refused[0]['reason']}")
    seconds = time.perf_counter() - started
    save_edited(lm, out, deltas, handles, loaded, base)
    after = _rewrite_probs(lm, loaded)
    result = {
        "out": str(out),
        "method": method.value,
        "layers": info["layers"],
        "auto_layers": info["auto_layers"],
        "edits": sum(len(d.case_ids) for d in deltas),
        "refused": refused,
        "seconds": seconds,
        "base_hash": base,
        "facts": [
            {**b, "p_true_after": a["p_true"], "p_new_after": a["p_new"]}
            for b, a in zip(before, after, strict=True)
        ],
        "monitor": checks,
    }
    if fmt is Format.json:
        emit_json(result)
        return
    emit_table(
        f"{method.value} edits at layers {info['layers']} (rewrite prompt)",
        [
            {
                "case_id": r["case_id"],
                "prompt": r["prompt"],
                "P(true) before": r["p_true"],
                "P(new) before": r["p_new"],
                "P(true) after": r["p_true_after"],
                "P(new) after": r["p_new_after"],
            }
            for r in result["facts"]
        ],
    )
    stderr.print(f"edited model and ledger: {out}  (undo: memloc edit undo {out} --out <folder>)")


def eval_command(
    model: ModelOpt,
    facts: FactsOpt,
    method: Annotated[
        Method | None, typer.Option("--method", help="Edit with this method, then measure.")
    ] = None,
    mode: Annotated[Mode, typer.Option("--mode", help="single, batch or sequential.")] = Mode.single,
    layers: EditLayersOpt = None,
    corpus: CorpusOpt = "generated",
    samples: SamplesOpt = 1000,
    fluency_tokens: Annotated[
        int, typer.Option("--fluency-tokens", help="Tokens generated per fluency prompt.")
    ] = 100,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for eval_report.json and the report.")
    ] = None,
    limit: LimitFactsOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = Dtype.float32,
    trust_remote_code: TrustRemoteCodeOpt = False,
    doc_start: DocStartOpt = "auto",
    seed: SeedOpt = 0,
    fmt: FormatOpt = Format.table,
) -> None:
    """CounterFact scores before and after editing (or of an edited model folder and its base)."""
    loaded = load_facts(facts, limit=limit)
    require_edit_targets(loaded)  # before the model loads: bad facts fail fast
    config = EvalConfig(generation_tokens=fluency_tokens)
    lm = load_lm(model, device, dtype, trust_remote_code, doc_start)
    with progress_bar("eval") as update:
        if method is not None:
            editor, info = prepare_editor(lm, loaded, _plan(method, layers, corpus, samples, seed), update)
            result = evaluate_edits(lm, loaded, editor, mode.value, config, progress=update)
            result.update(method=method.value, layers=info["layers"])
        else:
            result = _measure_folder(lm, model, loaded, config)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        report = Report(
            "edit_eval",
            model,
            {"eval": config.__dict__, "method": result.get("method")},
            result,
            {"pre": result["pre"], "post": result["post"]},
            provenance(seed, {"facts": facts}),
        )
        report.save(out / "eval_report.json")
        _, page = write_report(out, f"memloc edit evaluation: {model}", [eval_section(result)])
        stderr.print(f"report: {page}")
    if fmt is Format.json:
        emit_json(result)
        return
    emit_table(
        "CounterFact metrics",
        [{"metric": k, "pre": result["pre"][k], "post": result["post"][k]} for k in METRICS],
    )
    stdout.print(f"seconds per edit: {result['seconds_per_edit']:.2f}")
    if result.get("unedited"):
        stderr.print(f"not edited (the method found nothing to change): {', '.join(result['unedited'])}")


def _measure_folder(lm, model: str, facts, config: EvalConfig) -> dict:
    """An edited folder: post on it as saved, pre on its base restored in memory from the ledger."""
    post = measure(lm, facts, config)
    if not (Path(model) / "ledger.json").is_file():
        raise MemlocError(f"{model} has no ledger.json; to edit and measure in one go, pass --method")
    ledger, _ = read_ledger(model)
    undo(lm, model)
    pre = measure(lm, facts, config)
    return {
        "mode": "edited-folder",
        "method": ",".join(sorted({e["method"] for e in ledger["edits"]})),
        "facts": len(facts),
        "pre": summarize(pre),
        "post": summarize(post),
        "seconds_per_edit": 0.0,
        "per_fact": [
            {
                "case_id": a.case_id,
                **dict(zip(("p_true_pre", "p_new_pre"), _probs(a), strict=True)),
                **dict(zip(("p_true_post", "p_new_post"), _probs(b), strict=True)),
            }
            for a, b in zip(pre, post, strict=True)
        ],
    }


def _probs(scores) -> tuple[float, float]:
    true, new = scores.rewrite
    return math.exp(-true.nll), math.exp(-new.nll)


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
    if out.exists() and any(out.iterdir()):
        raise MemlocError(f"{out} already exists and is not empty; choose another --out")
    if out.resolve() == folder.resolve():
        raise MemlocError("refusing to write the restored model over the edited one; choose another --out")
    read_ledger(folder)  # one clear line before loading a model when the ledger is missing
    lm = load_language_model(str(folder), device=device)
    ledger = undo(lm, folder)
    out.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)
    result = {
        "out": str(out),
        "base_hash": ledger["base_hash"],
        "restored_hash": weights_hash(lm.model),
        "edits_undone": len(ledger["edits"]),
    }
    if fmt is Format.json:
        emit_json(result)
        return
    stdout.print(
        f"restored {result['edits_undone']} edit(s); weights hash {result['restored_hash'][:16]} "
        f"equals the base hash: {out}"
    )
