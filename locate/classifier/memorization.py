"""Every memorization measure of a run in one call: the survey's gold standards from a
subset ensemble, the fine-tune and checkpoint measures, and how they all agree.

Measures (names as `MemorizationConfig.measures` and `--measure` spell them):

- from a subset ensemble (core/ensemble): ``fz_mem`` (Feldman & Zhang 2020), ``c_score``
  (Jiang et al. 2021), ``counterfactual`` (Zhang et al. 2023), ``influence`` (Feldman &
  Zhang 2020), ``lira`` (Carlini et al. 2022);
- from fine-tunes of the run's model: ``holdout_kl`` (survey §3.1) and ``ssft`` (Maini et
  al. 2022; with an ensemble also the forgetting rate of Jagielski et al. 2023);
- from the run's checkpoints: ``csg`` (Ravikumar et al. 2025), ``benign`` (Anagnostidis
  et al. 2023), ``collapse`` (Nguyen et al. 2023).

Each finished measure is kept in RUN_DIR/locate/memorization/ under a key of its config
(and of the ensemble it read), so a rerun recomputes only what changed or never finished.
The comparison joins the run's one-run proxies (CSL, forgetting events, learning time,
and curvature where `locate scores` computed it).

Example::

    ens = load_ensemble(default_folder(run, 32, 0.5, 0), run)
    result = locate_memorization(run, torch.device("cpu"), MemorizationConfig(), ensembles=(ens,))
    result.comparison.auroc["fz_mem"], result.comparison.correlation("fz_mem", "csl")
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from memloc.core.checkpoints import atomic_write_text
from memloc.core.classifier.runs import RunFolder
from memloc.core.dataclass_files import load_dataclass, save_dataclass
from memloc.core.ensemble.logits import EnsembleLogits
from memloc.core.errors import MemlocError
from memloc.core.progress import Progress, within
from memloc.core.validation import fail
from memloc.locate.classifier.benign import BenignConfig, BenignResult, benign_memorization
from memloc.locate.classifier.csg import CSGConfig, CSGResult, cumulative_sample_gradient
from memloc.locate.classifier.holdout_kl import HoldoutKLConfig, HoldoutKLResult, locate_holdout_kl
from memloc.locate.classifier.influence import InfluenceConfig, InfluenceResult, influence_pairs
from memloc.locate.classifier.lira_attack import LiraConfig, LiraResult, evaluate_lira
from memloc.locate.classifier.measure_comparison import MeasureComparison, compare_measures
from memloc.locate.classifier.neural_collapse import CollapseConfig, CollapseResult, neural_collapse
from memloc.locate.classifier.scores import dynamics_scores, load_scores
from memloc.locate.classifier.second_split import (
    SecondSplitConfig,
    SecondSplitResult,
    second_split_forgetting,
)
from memloc.locate.classifier.subset_memorization import (
    Counterfactual,
    CounterfactualConfig,
    CScore,
    CScoreConfig,
    LabelMemorization,
    LabelMemorizationConfig,
    c_score,
    counterfactual_memorization,
    label_memorization,
)
from memloc.locate.results_store import config_key

STORE = "locate/memorization"  # inside the run folder
ENSEMBLE_MEASURES = ("fz_mem", "c_score", "counterfactual", "influence", "lira")
RUN_MEASURES = ("holdout_kl", "ssft", "csg", "benign", "collapse")
MEASURES = ENSEMBLE_MEASURES + RUN_MEASURES
# The slow ones: fine-tunes that train models of their own.
FINE_TUNES = ("holdout_kl", "ssft")

T = TypeVar("T")


@dataclass(frozen=True)
class MemorizationConfig:
    """Which measures, and each one's own config. ``measures=None``: every one the inputs allow
    (the ensemble measures only with an ensemble)."""

    measures: tuple[str, ...] | None = None
    fz_mem: LabelMemorizationConfig = field(default_factory=LabelMemorizationConfig)
    c_score: CScoreConfig = field(default_factory=CScoreConfig)
    counterfactual: CounterfactualConfig = field(default_factory=CounterfactualConfig)
    # Feldman & Zhang's filter: unfiltered, a small ensemble's top pairs are chance differences.
    influence: InfluenceConfig = field(default_factory=InfluenceConfig.paper)
    lira: LiraConfig = field(default_factory=LiraConfig)
    holdout_kl: HoldoutKLConfig = field(default_factory=HoldoutKLConfig)
    ssft: SecondSplitConfig = field(default_factory=SecondSplitConfig)
    csg: CSGConfig = field(default_factory=CSGConfig)
    benign: BenignConfig = field(default_factory=BenignConfig)
    collapse: CollapseConfig = field(default_factory=CollapseConfig)

    def __post_init__(self) -> None:
        if self.measures is not None:
            unknown = [m for m in self.measures if m not in MEASURES]
            if unknown:
                raise fail(
                    self, "measures", f"has unknown {', '.join(unknown)}; choose from {', '.join(MEASURES)}"
                )
            if not self.measures:
                raise fail(self, "measures", "is empty; name at least one or leave it unset for all")

    def chosen(self, has_ensemble: bool) -> tuple[str, ...]:
        """The measures to compute; asking for an ensemble measure without an ensemble is an error."""
        if self.measures is None:
            return MEASURES if has_ensemble else RUN_MEASURES
        needing = [m for m in self.measures if m in ENSEMBLE_MEASURES]
        if needing and not has_ensemble:
            raise MemlocError(
                f"{', '.join(needing)}: measures that need a subset ensemble; train one with `memloc ensemble RUN_DIR` "
                "or pass --ensemble",
                field="ensemble",
            )
        return tuple(m for m in MEASURES if m in self.measures)


@dataclass(frozen=True)
class MemorizationResult:
    """What `locate_memorization` found; a measure not computed is None.

    ``comparison`` holds each per-example measure's AUROC at flagging the mislabeled
    examples and their Spearman matrix, the one-run proxies included.
    """

    ensemble_models: int | None
    ensemble_keeps: tuple[float, ...]
    comparison: MeasureComparison
    fz_mem: LabelMemorization | None = None
    c_score: CScore | None = None
    counterfactual: Counterfactual | None = None
    influence: InfluenceResult | None = None
    lira: LiraResult | None = None
    holdout_kl: HoldoutKLResult | None = None
    ssft: SecondSplitResult | None = None
    csg: CSGResult | None = None
    benign: BenignResult | None = None
    collapse: CollapseResult | None = None
    noisy: np.ndarray | None = field(default=None, compare=False, repr=False)


RESULT_TYPES: dict[str, type] = {
    "fz_mem": LabelMemorization,
    "c_score": CScore,
    "counterfactual": Counterfactual,
    "influence": InfluenceResult,
    "lira": LiraResult,
    "holdout_kl": HoldoutKLResult,
    "ssft": SecondSplitResult,
    "csg": CSGResult,
    "benign": BenignResult,
    "collapse": CollapseResult,
}


def locate_memorization(
    run: RunFolder,
    device: torch.device,
    config: MemorizationConfig,
    *,
    ensembles: Sequence[EnsembleLogits] = (),
    progress: Progress | None = None,
) -> MemorizationResult:
    """Compute (or read back) the chosen measures of ``run`` and compare them with its proxies.

    ``ensembles``: subset ensembles of this run (core/ensemble/folder.py load_ensemble); the
    first serves every ensemble measure, and all of them the C-score (averaged over their
    keep ratios).
    """
    chosen = config.chosen(bool(ensembles))
    ensemble = ensembles[0] if ensembles else None
    tag = _ensembles_tag(ensembles)
    computed: dict[str, Any] = {}
    for i, name in enumerate(chosen):
        if progress:
            progress(i, len(chosen), name)
        step = within(progress, i, len(chosen), name)
        compute = _computer(name, run, device, config, ensembles, step)
        uses_ensemble = name in ENSEMBLE_MEASURES or (name == "ssft" and ensemble is not None)
        key = config_key({"config": getattr(config, name), "ensemble": tag if uses_ensemble else None})
        computed[name] = _cached(run.root / STORE, name, key, RESULT_TYPES[name], compute)
    if not ensembles:
        return _compared(run, computed, None, ())
    models, keeps = ensembles[0].models, [e.membership.config.keep for e in ensembles]
    # Which ensemble the stored measures read, for load_memorization.
    atomic_write_text(
        run.root / STORE / "ensemble.json", json.dumps({"models": models, "keeps": keeps}) + "\n"
    )
    return _compared(run, computed, models, keeps)


def _compared(
    run: RunFolder, computed: dict[str, Any], models: int | None, keeps: Sequence[float]
) -> MemorizationResult:
    """The result of the measures ``computed``, compared with each other and the run's proxies."""
    labels, _ = run.load_noise()
    return MemorizationResult(
        ensemble_models=models,
        ensemble_keeps=tuple(keeps),
        comparison=compare_measures(_per_example(run, computed), labels.mask if run.mask_known() else None),
        noisy=labels.mask,
        **computed,
    )


def _computer(
    name: str,
    run: RunFolder,
    device: torch.device,
    config: MemorizationConfig,
    ensembles: Sequence[EnsembleLogits],
    progress: Progress | None,
) -> Callable[[], Any]:
    ens = ensembles[0] if ensembles else None
    table: dict[str, Callable[[], Any]] = {
        "fz_mem": lambda: label_memorization(_need(ens), config.fz_mem),
        "c_score": lambda: c_score(list(ensembles), config.c_score),
        "counterfactual": lambda: counterfactual_memorization(_need(ens), config.counterfactual),
        "influence": lambda: influence_pairs(_need(ens), config.influence),
        "lira": lambda: evaluate_lira(_need(ens), config.lira),
        "holdout_kl": lambda: locate_holdout_kl(run, device, config.holdout_kl, progress=progress),
        "ssft": lambda: second_split_forgetting(run, device, config.ssft, ensemble=ens, progress=progress),
        "csg": lambda: cumulative_sample_gradient(run, device, config.csg, progress=progress),
        "benign": lambda: benign_memorization(run, device, config.benign, progress=progress),
        "collapse": lambda: neural_collapse(run, device, config.collapse, progress=progress),
    }
    return table[name]


def _need(ensemble: EnsembleLogits | None) -> EnsembleLogits:
    assert ensemble is not None  # MemorizationConfig.chosen refused ensemble measures without one
    return ensemble


def _per_example(run: RunFolder, computed: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every per-example score, oriented so that larger means more likely memorized."""
    dyn = run.load_dynamics()
    scores = dict(dynamics_scores(dyn.loss, dyn.correct))
    stored = load_scores(run)
    if stored is not None and "curvature" in stored.scores:
        scores["curvature"] = stored.scores["curvature"]
    pick: dict[str, Callable[[Any], np.ndarray]] = {
        "fz_mem": lambda r: r.mem,
        "c_score": lambda r: r.memorized,
        "counterfactual": lambda r: r.score,
        "holdout_kl": lambda r: r.kl,
        "ssft": lambda r: r.score,
        "csg": lambda r: r.csg,
    }
    for name, get in pick.items():
        if name in computed:
            scores[name] = np.asarray(get(computed[name]), dtype=float)
    return scores


def _ensembles_tag(ensembles: Sequence[EnsembleLogits]) -> list[dict[str, Any]]:
    """What identifies the ensembles a stored measure read: their designs and a hash of their logits."""
    tags = []
    for e in ensembles:
        digest = hashlib.sha256()
        for array in (e.membership.matrix, e.train_logits, e.test_logits, e.given):
            digest.update(np.ascontiguousarray(array).tobytes())
        config = e.membership.config
        tags.append(
            {"models": e.models, "keep": config.keep, "seed": config.seed, "sha256": digest.hexdigest()}
        )
    return tags


def _cached(folder: Path, name: str, key: str, cls: type[T], compute: Callable[[], T]) -> T:
    keys_path = folder / "keys.json"
    keys = json.loads(keys_path.read_text()) if keys_path.is_file() else {}
    if keys.get(name) == key and (folder / f"{name}.json").is_file():
        return load_dataclass(cls, folder / name)
    result = compute()
    save_dataclass(result, folder / name)
    atomic_write_text(keys_path, json.dumps({**keys, name: key}, indent=1) + "\n")
    return result


def load_memorization(run: RunFolder) -> MemorizationResult | None:
    """The measures stored in ``run`` (whichever were computed), compared; None if none were."""
    folder = run.root / STORE
    found: dict[str, Any] = {
        n: load_dataclass(RESULT_TYPES[n], folder / n) for n in MEASURES if (folder / f"{n}.json").is_file()
    }
    if not found:
        return None
    info_path = folder / "ensemble.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {"models": None, "keeps": []}
    return _compared(run, found, info["models"], info["keeps"])


def finished_ensembles(run: RunFolder) -> list[Path]:
    """The complete ensemble folders under RUN_DIR/ensembles, the largest first."""
    from memloc.core.ensemble.folder import EnsembleFolder

    found = []
    for folder in sorted((run.root / "ensembles").glob("*/ensemble.json")):
        ens = EnsembleFolder(folder.parent)
        models = ens.membership().models
        if len(ens.done_members(models)) == models:
            found.append((models, folder.parent))
    return [path for _, path in sorted(found, key=lambda t: -t[0])]


def summary(result: MemorizationResult) -> dict[str, Any]:
    """The JSON document of `locate memorization --format json`: every scalar, and each figure's numbers."""
    from memloc.locate.classifier.memorization_report import figure_numbers, proxy_agreement

    return {
        "ensemble": {"models": result.ensemble_models, "keeps": list(result.ensemble_keeps)},
        "auroc": dict(result.comparison.auroc),
        "proxy_spearman_with_fz_mem": proxy_agreement(result),
        "figures": figure_numbers(result),
    }
