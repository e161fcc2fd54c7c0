"""The report's memorization sections, and the numbers behind each of their figures.

One section per kind of measure: how all measures agree (AUROC table, Spearman heat
map), Feldman–Zhang memorization (in/out histograms, the most influential train → test
pairs as pictures), LiRA (ROC on log–log axes), second-split forgetting (SSFT curves,
forgetting rate), and the feature measures (benign kNN probe, NC1 over training).
`figure_numbers` gives each figure's data for ``--format json``.

Example::

    sections = memorization_sections(load_memorization(run), run)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from memloc.core.classifier.runs import RunFolder
from memloc.core.render import Section
from memloc.locate.classifier.benign import BenignResult
from memloc.locate.classifier.ensemble_figures import in_out_histograms, influence_grid, lira_roc_figure
from memloc.locate.classifier.influence import InfluencePair
from memloc.locate.classifier.lira_attack import LiraResult
from memloc.locate.classifier.measure_comparison import spearman_figure
from memloc.locate.classifier.memorization import MemorizationResult
from memloc.locate.classifier.split_figures import benign_bars, forgetting_rate_curve, nc1_curves, ssft_curves

PROXIES = ("csl", "learning_time", "forgetting", "curvature", "csg")
GRID_PAIRS = 8


def memorization_sections(result: MemorizationResult, run: RunFolder) -> list[Section]:
    """The sections for whichever measures ``result`` holds."""
    sections = [_agreement_section(result)]
    if result.fz_mem is not None:
        sections.append(_label_memorization_section(result, run))
    if result.lira is not None:
        sections.append(_lira_section(result))
    if result.ssft is not None:
        sections.append(_ssft_section(result))
    if result.benign is not None or result.collapse is not None:
        sections.append(_feature_section(result))
    return sections


def proxy_agreement(result: MemorizationResult) -> dict[str, float]:
    """Spearman ρ of each cheap one-run proxy with Feldman–Zhang memorization (empty without it)."""
    cmp = result.comparison
    if "fz_mem" not in cmp.names:
        return {}
    return {p: cmp.correlation("fz_mem", p) for p in PROXIES if p in cmp.names}


def pair_rows(pairs: Sequence[InfluencePair]) -> list[dict[str, Any]]:
    """One table row per influence pair."""
    return [{"train": p.train, "test": p.test, "influence": p.influence, "mem": p.mem} for p in pairs]


def lira_rows(lira: LiraResult) -> list[dict[str, Any]]:
    """One table row per LiRA variant: AUC and the TPR at the two low false-positive rates."""
    return [
        {
            "variant": v.variant,
            "AUC": v.auc,
            "TPR at 0.1% FPR": v.tpr_at_0_1pct,
            "TPR at 1% FPR": v.tpr_at_1pct,
        }
        for v in lira.variants
    ]


def probe_rows(benign: BenignResult) -> list[dict[str, Any]]:
    """One table row per layer group: the kNN probe at initialization and after training."""
    return [{"group": la.group, "init": la.init_accuracy, "final": la.final_accuracy} for la in benign.layers]


def _agreement_section(result: MemorizationResult) -> Section:
    cmp = result.comparison
    lines = [
        "AUROC of each measure at flagging the mislabeled examples (larger score = more likely memorized)."
    ]
    agree = proxy_agreement(result)
    if agree:
        lines.append(
            "Spearman ρ of the one-run proxies with Feldman–Zhang memorization: "
            + ", ".join(f"{k} {v:.2f}" for k, v in agree.items())
            + "."
        )
    if result.ensemble_models:
        keeps = ", ".join(f"{k:g}" for k in result.ensemble_keeps)
        lines.append(f"Ensemble: {result.ensemble_models} models, keep {keeps}.")
    table = [{"measure": n, "AUROC": cmp.auroc[n]} for n in cmp.names]
    return Section(
        "Memorization measures",
        lines,
        [("AUROC at flagging noisy labels", table)],
        [("measure_spearman", spearman_figure(cmp))],
        captions={
            "measure_spearman": "Spearman rank correlation of every pair of measures over the training examples."
        },
    )


def _label_memorization_section(result: MemorizationResult, run: RunFolder) -> Section:
    mem = result.fz_mem
    assert mem is not None
    noisy = result.noisy if result.noisy is not None else np.zeros(len(mem.mem), bool)
    groups = [
        (mem.p_in[noisy], mem.p_in[~noisy]),
        (mem.p_out[noisy], mem.p_out[~noisy]),
        (mem.mem[noisy], mem.mem[~noisy]),
    ]
    hist = in_out_histograms(
        groups,
        ["P(correct | in)", "P(correct | out)", "mem = in − out"],
        labels=("noisy", "clean"),
        xlabel="value",
    )
    figures = [("fz_histograms", hist)]
    captions = {
        "fz_histograms": "Accuracy on the given label of the models that trained on an example (in), "
        "of those that did not (out), and their difference, for mislabeled and clean examples."
    }
    lines = [f"Mean memorization {mem.mean:.3f}; {mem.memorized} examples with mem ≥ {mem.threshold:g}."]
    if result.influence is not None and result.influence.pairs:
        data = run.dataset()
        labels, _ = run.load_noise()
        figures.append(
            (
                "influence_pairs",
                influence_grid(
                    result.influence.pairs[:GRID_PAIRS],
                    data.x_train,
                    data.x_test,
                    given=labels.given,
                    test_labels=data.y_test,
                ),
            )
        )
        captions["influence_pairs"] = (
            "The most influential (training image → test image) pairs: training on the left image changes the accuracy on the right one by the influence shown."
        )
        lines.append(
            f"Largest influence of a training example on a test example: {result.influence.max_influence:.3f}."
        )
    tables = []
    if result.influence is not None:
        tables.append(
            (
                "most influential pairs",
                pair_rows(result.influence.pairs[:20]),
            )
        )
    return Section("Feldman–Zhang memorization and influence", lines, tables, figures, captions=captions)


def _lira_section(result: MemorizationResult) -> Section:
    lira = result.lira
    assert lira is not None
    table = lira_rows(lira)
    return Section(
        "LiRA membership inference",
        [
            f"Every one of the {lira.targets} models in turn is the target, the others its shadows; LOSS is the baseline."
        ],
        [("LiRA", table)],
        [("lira_roc", lira_roc_figure(lira))],
        captions={"lira_roc": "ROC of each LiRA variant and of the LOSS attack, on log–log axes."},
    )


def _ssft_section(result: MemorizationResult) -> Section:
    ssft = result.ssft
    assert ssft is not None
    figures = [("ssft_curves", ssft_curves(ssft))]
    captions = {
        "ssft_curves": "Share of the first half still correct on its given label while fine-tuning on the second half."
    }
    if ssft.forgetting is not None:
        figures.append(("forgetting_rate", forgetting_rate_curve(ssft)))
        captions["forgetting_rate"] = (
            "Offline LiRA on the first half's examples after each fine-tuning epoch: how fast membership is forgotten."
        )
    return Section(
        "Second-split forgetting",
        [
            f"SSFT AUROC at flagging noisy labels {ssft.auroc:.3f}; fine-tuned {ssft.config.finetune_epochs} epochs each way."
        ],
        [],
        figures,
        captions=captions,
    )


def _feature_section(result: MemorizationResult) -> Section:
    figures, captions, tables = [], {}, []
    if result.benign is not None:
        figures.append(("benign_probe", benign_bars(result.benign)))
        captions["benign_probe"] = (
            "kNN-probe test accuracy on the true labels of each group's features, at initialization and after training on noisy labels."
        )
        tables.append(
            (
                "benign memorization (kNN probe)",
                probe_rows(result.benign),
            )
        )
    if result.collapse is not None:
        figures.append(("nc1", nc1_curves(result.collapse)))
        captions["nc1"] = "Within-class variability NC1 of each group's features over training."
    return Section("Feature measures", [], tables, figures, captions=captions)


def figure_numbers(result: MemorizationResult) -> dict[str, Any]:
    """The data of every memorization figure, as JSON-ready lists."""
    out: dict[str, Any] = {"spearman": result.comparison.to_dict()}
    noisy = result.noisy
    if result.fz_mem is not None and noisy is not None:
        f = result.fz_mem
        spans = {"p_in": (f.p_in, (0.0, 1.0)), "p_out": (f.p_out, (0.0, 1.0)), "mem": (f.mem, (-1.0, 1.0))}
        out["fz_histograms"] = {
            name: {"noisy": _hist(values[noisy], span), "clean": _hist(values[~noisy], span)}
            for name, (values, span) in spans.items()
        }
    if result.influence is not None:
        out["influence_pairs"] = pair_rows(result.influence.pairs)
    if result.lira is not None:
        out["lira_roc"] = {
            v.variant: {
                "auc": v.auc,
                "tpr_at_0.1%": v.tpr_at_0_1pct,
                "tpr_at_1%": v.tpr_at_1pct,
                "fpr": v.fpr.tolist(),
                "tpr": v.tpr.tolist(),
            }
            for v in result.lira.variants
        }
    if result.ssft is not None:
        s = result.ssft
        out["ssft_curves"] = {
            "noisy": s.still_correct(s.noisy).tolist(),
            "clean": s.still_correct(~s.noisy).tolist(),
        }
        if s.forgetting is not None:
            out["forgetting_rate"] = [
                {"fpr": c.fpr, "auc": c.auc.tolist(), "tpr": c.tpr.tolist()} for c in s.forgetting
            ]
    if result.benign is not None:
        out["benign_probe"] = probe_rows(result.benign)
    if result.collapse is not None:
        c = result.collapse
        out["nc1"] = {
            "epochs": list(c.epochs),
            "groups": list(c.groups),
            "nc1": c.nc1.tolist(),
            "mem": c.mem.tolist(),
        }
    return out


def _hist(values: np.ndarray, span: tuple[float, float], bins: int = 20) -> dict[str, list[float]]:
    counts, edges = np.histogram(values, bins=bins, range=span)
    return {"counts": counts.tolist(), "edges": edges.tolist()}
