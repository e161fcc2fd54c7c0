"""`memloc locate neurons` over a run folder: choose examples, search resumably, summarize.

Results go to RUN_DIR/locate/neurons.jsonl, one line per example; its config sits
beside it in neurons.config.json, so a rerun with the same options skips finished
examples and a rerun with other options is refused instead of mixing results.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import cast

import numpy as np
import torch
from memloc.core.adapters import ClassifierAdapter
from memloc.core.checkpoints import atomic_write_text
from memloc.core.classifier.model_source import classifier_adapter
from memloc.core.classifier.runs import RunFolder
from memloc.core.classifier.splits import RunData
from memloc.core.errors import MemlocError, RunFolderError
from memloc.core.jsonl import read_log
from memloc.core.progress import Progress
from memloc.core.report import Report, provenance
from memloc.locate.classifier.example_choice import GroupChoice, choose_examples, parse_examples, run_scores
from memloc.locate.classifier.unit_results import FlipRecord, GroupSummary, NeuronsResult
from memloc.locate.classifier.unit_search import FlipConfig, FlipData, FlipResult, flip_search
from memloc.locate.graph import example_unit_graph, sharing_stats, write_graphml

RESULTS = "locate/neurons.jsonl"
REPORT_PATH = "locate/neurons_report.json"
GRAPH_PATH = "locate/neurons.graphml"


def final_checkpoint(run: RunFolder) -> int:
    """The run's last planned epoch, which must have its checkpoint."""
    planned = run.planned_epochs()
    if planned not in run.epochs():
        raise RunFolderError(
            f"{run.root} has no final checkpoint (epoch {planned}; last saved {run.epochs()[-1]}); "
            "finish its training first (rerunning it resumes from the last saved epoch)"
        )
    return planned


def summarize(records: Sequence[FlipRecord]) -> dict[str, GroupSummary]:
    """Per group (noisy first): flip rate, mean/median units, per-layer share of units, mean collateral drop."""
    out = {}
    for group in ("noisy", "clean"):
        recs = [r for r in records if r.group == group]
        if not recs:
            continue
        flipped = [r for r in recs if r.flipped]
        counts = [r.n_units for r in flipped]
        layers = Counter(layer for r in flipped for layer, _ in r.units)
        total = sum(layers.values())
        out[group] = GroupSummary(
            examples=len(recs),
            flip_rate=len(flipped) / len(recs),
            outcomes=dict(Counter(r.reason for r in recs)),
            mean_units=statistics.mean(counts) if counts else None,
            median_units=statistics.median(counts) if counts else None,
            layer_share={k: v / total for k, v in sorted(layers.items())} if total else {},
            # A flipped record always carries its measured drop.
            mean_collateral_drop=statistics.mean(cast(float, r.collateral_drop) for r in flipped)
            if flipped
            else None,
            seconds_per_example=statistics.mean(r.seconds for r in recs),
        )
    return out


def summary_rows(groups: Mapping[str, GroupSummary]) -> list[dict]:
    """One flat table row per group: the scalar fields of `summarize`."""
    return [summary.table_row(group) for group, summary in groups.items()]


def _stored_options(config: FlipConfig, final: int) -> dict:
    """The options a results file was made with, as neurons.config.json holds them."""
    flip = asdict(config)
    if not config.heads:
        del flip["heads"]  # as results stored it before heads could be searched
    return {"flip": flip, "final_epoch": final}


def _with_heads(run: RunFolder, model: torch.nn.Module) -> ClassifierAdapter:
    """The run's adapter with its attention heads as groups; a model without heads is refused."""
    adapter = classifier_adapter(run.spec(), model, heads=True)
    if not any(g.unit_kind == "head" for g in adapter.groups):
        raise RunFolderError(f"{run.model_id()} has no attention heads to search; drop --heads")
    return adapter


def locate_neurons(
    run: RunFolder,
    device: torch.device,
    config: FlipConfig,
    *,
    examples: str = "both",
    n: int = 100,
    out: Path | None = None,
    progress: Progress | None = None,
) -> NeuronsResult:
    """The fewest units that flip each chosen example (`flip_search`); resumable.

    ``examples`` chooses them (locate/classifier/example_choice.py): ``noisy``,
    ``clean`` or ``both`` (``n`` of each), ids ``3,17``, or by score, ``top:csl:50``.

    result = locate_neurons(RunFolder.open("runs/cnn"), torch.device("cpu"), FlipConfig(), n=20)
    result.noisy.median_units
    """
    final = final_checkpoint(run)
    labels, _ = run.load_noise()
    targets, known = _targets(run, examples, labels.mask, n, config.seed), run.mask_known()
    path, config_path, graph_path, report_path = _result_files(run, out)
    wanted = _stored_options(config, final)
    if config_path.is_file() and json.loads(config_path.read_text()) != wanted:
        raise RunFolderError(
            f"{path} holds results of other options; pass another out or remove it", field="out"
        )
    done: dict[int, FlipRecord] = {}
    for raw in read_log(path, repair=True):  # a torn last line is redone
        rec = FlipRecord.from_dict(raw)
        done[rec.id] = rec
    todo = [t for t in targets if t not in done]
    model, adapter = run.load_model(final)
    if config.heads:
        adapter = _with_heads(run, model)
    model.to(device)
    data = RunData.load(run, device)
    flip_data = FlipData.from_run(data, config.holdout_size, config.seed)
    atomic_write_text(config_path, json.dumps(wanted, indent=2) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    finished = len(targets) - len(todo)
    if progress:
        progress(finished, len(targets), "flip search")
    with open(path, "a") as sink:

        def keep(result: FlipResult) -> None:
            nonlocal finished
            rec = FlipRecord.of(result, bool(labels.mask[result.index]))
            if not known:  # neither noisy nor clean: kept out of both summaries
                rec = replace(rec, group="unknown")
            done[result.index] = rec
            sink.write(json.dumps(rec.to_dict()) + "\n")
            sink.flush()
            finished += 1
            if progress:
                progress(finished, len(targets), "flip search")

        flip_search(model, adapter, flip_data, todo, config, on_result=keep)
    records = tuple(done[t] for t in targets)
    graph = example_unit_graph(records)
    groups = summarize(records)
    result = NeuronsResult(
        flip=config,
        examples=examples,
        n=n,
        records=records,
        sharing=sharing_stats(graph),
        graphml=str(write_graphml(graph, graph_path)),
        jsonl=str(path),
        noisy=groups.get("noisy"),
        clean=groups.get("clean"),
    )
    report = Report(
        method="locate.neurons",
        model_id=run.model_id(),
        **result.to_dict(),
        provenance=provenance(config.seed, {"final_checkpoint": run.checkpoint(final)}),
    )
    report.save(report_path)
    return result


def _result_files(run: RunFolder, out: Path | None) -> tuple[Path, Path, Path, Path]:
    """The results file, and the options, graph and summary files beside it.

    A search written elsewhere with ``out`` keeps its graph and summary beside it, so
    it never overwrites the run's default search, which `load_neurons` and the report read.
    """
    path = Path(out) if out else run.root / RESULTS
    stem = path.name.removesuffix(".jsonl")
    config = path.with_name(stem + ".config.json")
    if not out:
        return path, config, run.root / GRAPH_PATH, run.root / REPORT_PATH
    return path, config, path.with_name(stem + ".graphml"), path.with_name(stem + "_report.json")


def _targets(run: RunFolder, examples: str, mask: np.ndarray, n: int, seed: int) -> list[int]:
    """The chosen example ids; a choice by noisy/clean group needs the noise mask an import may lack."""
    choice = parse_examples(examples)
    if not run.mask_known() and isinstance(choice, GroupChoice):
        raise MemlocError(
            f"examples {examples!r} are chosen by the noise mask, which {run.root} lacks; "
            "choose them by id (3,17) or by score (top:csl:20), or import it with --true-labels or --noise-mask",
            field="examples",
        )
    return choose_examples(choice, mask, n, seed, run_scores(run))


def load_neurons(run: RunFolder) -> NeuronsResult | None:
    """The stored result of `locate neurons` on ``run``, or None when it has not run."""
    path = run.root / REPORT_PATH
    return NeuronsResult.from_report(Report.load(path)) if path.is_file() else None
