"""Figures and report sections of edit evaluations (CounterFact metrics before and after)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from memloc.core.errors import MemlocError
from memloc.core.lm.facts import NEIGHBOR_RULES
from memloc.core.render import Section, write_report
from memloc.core.report import Report, provenance
from memloc.edit.evaluate import METRIC_MEANINGS, METRICS, EvalConfig, EvalResult

SHOWN = ("ES", "PS", "NS", "S", "EA", "PA", "NA")

EVAL_FILE = "eval_report.json"


def metrics_figure(result: EvalResult) -> Figure:
    """Bars of each score before and after the edits, and P(new) vs P(true) per fact."""
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    bars, scatter = fig.subplots(1, 2, width_ratios=(1.4, 1))
    names = [m for m in SHOWN if result.pre.get(m) is not None]
    x = np.arange(len(names))
    for offset, key, scores, color in (
        (-0.2, "pre", result.pre, "#9e9e9e"),
        (0.2, "post", result.post, "#1f77b4"),
    ):
        bars.bar(x + offset, [scores[m] for m in names], 0.4, label=key, color=color)
    bars.set_xticks(x, names)
    bars.set_ylim(0, 1.05)
    bars.set_title(f"{result.method or 'edit'} ({result.mode}, {result.facts} facts)")
    bars.legend()
    rows = result.per_fact
    scatter.scatter(
        [r.p_true_pre for r in rows], [r.p_new_pre for r in rows], s=14, c="#9e9e9e", label="before"
    )
    scatter.scatter(
        [r.p_true_post for r in rows], [r.p_new_post for r in rows], s=14, c="#1f77b4", label="after"
    )
    scatter.plot([0, 1], [0, 1], color="black", lw=0.8, ls=":")
    scatter.set_xlabel("P(true target)")
    scatter.set_ylabel("P(new target)")
    scatter.set_title("rewrite prompt, per fact")
    scatter.legend(fontsize=8)
    return fig


def curve_figure(result: EvalResult) -> Figure:
    """ES, PS, NS, fluency and retention against the number of sequential edits."""
    fig = Figure(figsize=(7.5, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    scores, fluency = fig.subplots(1, 2, width_ratios=(1.6, 1))
    edits = [p.edits for p in result.curve]
    for name, values in (
        ("ES", [p.es for p in result.curve]),
        ("PS", [p.ps for p in result.curve]),
        ("NS", [p.ns for p in result.curve]),
        ("retention (ES of the first facts)", [p.retention_es for p in result.curve]),
    ):
        scores.plot(edits, [np.nan if v is None else v for v in values], marker="o", label=name)
    scores.set_ylim(0, 1.05)
    scores.set_xlabel("facts edited")
    scores.set_title(f"{result.method or 'edit'}: sequential edits")
    scores.legend(fontsize=7)
    fluency.plot(edits, [np.nan if p.fluency is None else p.fluency for p in result.curve], marker="o")
    fluency.set_xlabel("facts edited")
    fluency.set_title("fluency (n-gram entropy)")
    return fig


def eval_section(result: EvalResult, label: str = "") -> Section:
    """The section of one evaluation; ``label`` (its folder on a page of several) keeps figure names apart."""
    where = f" ({label})" if label and label != "." else ""
    section = Section(f"Edit evaluation: {result.method or 'edited model'}, {result.mode} mode{where}")
    tag = "".join(c if c.isalnum() else "_" for c in label) if where else ""
    section.paragraphs.append(
        f"{result.facts} facts; {result.seconds_per_edit:.2f} s per edit (computing and applying). "
        + "; ".join(f"{k}: {v}" for k, v in METRIC_MEANINGS.items())
        + " (Meng et al. 2022). Neighbourhood rule: "
        + NEIGHBOR_RULES.get(result.neighborhood_rule, result.neighborhood_rule)
        + "."
    )
    section.tables.append(
        (
            "CounterFact metrics",
            [
                {"": stage, **{k: scores.get(k) for k in METRICS}}
                for stage, scores in (("pre", result.pre), ("post", result.post))
            ],
        )
    )
    section.figures.append(
        (f"edit_eval_{result.method or 'model'}_{result.mode}{tag and '_' + tag}", metrics_figure(result))
    )
    probe = result.layer_probe
    if probe is not None:
        section.paragraphs.append(
            f"Layers {list(probe.layers)} chosen by the edit probe (--layers auto): {probe.rule}."
        )
        rows = [
            {"layer": s.layer, "ES": s.es, "PS": s.ps, "NS": s.ns, "margin": s.margin} for s in probe.scores
        ]
        section.tables.append(("edit probe, per candidate layer", rows))
    if result.curve:
        section.paragraphs.append(f"Protocol: {result.protocol}.")
        section.tables.append(("scores as the edits pile up", [asdict(point) for point in result.curve]))
        section.figures.append(
            (f"edit_curve_{result.method or 'model'}{tag and '_' + tag}", curve_figure(result))
        )
    return section


def check_eval_out(out: Path) -> Path:
    """Refuse, before any work, an ``--out`` that cannot be written or already holds an evaluation.

    An evaluation can take hours; a second one must not overwrite the first (a folder of
    several runs, each in its own subfolder, is what `memloc report` compares).

    Example::

        out = check_eval_out(Path("eval/rome"))
    """
    from memloc.core.paths import writable_folder

    out = writable_folder(out)
    if (out / EVAL_FILE).exists():
        raise MemlocError(
            f"--out {out} already holds an evaluation ({EVAL_FILE}); choose another folder or remove it",
            field="out",
        )
    return out


def save_eval_report(
    out: Path, model: str, result: EvalResult, config: EvalConfig, seed: int, facts: Path
) -> Path:
    """Write ``eval_report.json`` (a `Report`) and the HTML/Markdown report into ``out``; the page's path.

    Example::

        page = save_eval_report(Path("eval"), "smollm2-135m", result, EvalConfig(), 0, Path("facts.json"))
    """
    out.mkdir(parents=True, exist_ok=True)
    record = result.to_dict()
    report = Report(
        "edit_eval",
        model,
        {
            "eval": asdict(config),
            "method": result.method,
            "mode": result.mode,
            "protocol": result.protocol or None,
            "neighborhood_rule": NEIGHBOR_RULES.get(result.neighborhood_rule, result.neighborhood_rule),
        },
        record,
        {"pre": record["pre"], "post": record["post"]},
        provenance(seed, {"facts": facts}),
    )
    report.save(out / EVAL_FILE)
    _, page = write_report(out, f"memloc edit evaluation: {model}", [eval_section(result)])
    return page
