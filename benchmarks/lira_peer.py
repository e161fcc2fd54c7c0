"""memloc's LiRA on a small digits ensemble, against a plain reference LiRA and, where it
imports, privacy-meter 1.0.1's reference-model attack on the same target and reference models.

Usage: python benchmarks/lira_peer.py [--models 16] [--references 8] [--epochs 40] [--noise 0.1]

privacy-meter lives in its own venv (it must never enter memloc's environment):
    python -m venv --system-site-packages /tmp/pm-venv
    /tmp/pm-venv/bin/pip install privacy-meter==1.0.1
    # the 1.0.1 wheel declares no dependencies, yet privacy_meter.model imports tensorflow
    # and opacus at import time, and audit_report seaborn:
    /tmp/pm-venv/bin/pip install tensorflow-cpu opacus seaborn
    PYTHONPATH=.pp /tmp/pm-venv/bin/python benchmarks/lira_peer.py
Under plain python (no privacy_meter) the peer part is skipped, saying why.

Data: scikit-learn's digits, shuffled once; pool A (900 examples, --noise of their
labels flipped) is the ensemble's training set and pool B (the other 897) its test set.
1. Ensemble: --models MLPs (64-128-10), each trained with core/training/subset_fit.fit
   on a balanced half of A. memloc's evaluate_lira (every model as target) against a
   reference written plainly here: per target, per example, fit the Gaussians over the
   other models and score with scipy.stats.norm, then one sklearn ROC per variant. The
   scores must agree to 1e-7 (exit 1 otherwise).
2. Peer: the target is ensemble model 0 (members: its half of A, non-members: the other
   half); --references MLPs train on random halves of B, so every reference is "out" on
   A. privacy-meter's ReferenceMetric (Ye et al. 2022's attack R: per-example loss
   quantiles of the references) runs on the real torch models; memloc scores the same
   models with offline LiRA (lira.out_statistics / offline_score) and LOSS.
The last line is the speed-up of memloc's LiRA over the reference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np
import torch
from memloc.core.ensemble.logits import EnsembleLogits
from memloc.core.ensemble.membership import MembershipConfig, draw_membership
from memloc.core.training.subset_fit import FitConfig, fit
from memloc.locate.classifier.lira import logit_confidence, offline_score, out_statistics
from memloc.locate.classifier.lira_attack import VARIANTS, LiraConfig, evaluate_lira, negative_cross_entropy
from scipy.stats import norm
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

POOL_A = 900


def digits(noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    data = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.target))
    x = torch.tensor(data.data[order] / 16.0, dtype=torch.float32)
    y = data.target[order].copy()
    flip = rng.random(POOL_A) < noise
    y[:POOL_A][flip] = (y[:POOL_A][flip] + rng.integers(1, 10, flip.sum())) % 10
    y_t = torch.tensor(y, dtype=torch.long)
    return x[:POOL_A], y_t[:POOL_A], x[POOL_A:], y_t[POOL_A:]


def train_models(
    x: torch.Tensor, y: torch.Tensor, subsets: list[np.ndarray], epochs: int, seed: int
) -> list[nn.Module]:
    models = []
    for k, subset in enumerate(subsets):
        torch.manual_seed(seed + k)
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        fit(model, x, y, subset, FitConfig(epochs=epochs, batch_size=32, lr=3e-3, seed=seed + k))
        models.append(model.eval())
    return models


@torch.no_grad()
def logits_of(models: list[nn.Module], x: torch.Tensor) -> np.ndarray:
    return np.stack([m(x).numpy() for m in models])


def reference_lira(phi: np.ndarray, inside: np.ndarray, loss: np.ndarray) -> dict[str, np.ndarray]:
    """The straightforward every-model-as-target LiRA: one Gaussian fit per (target, example)."""
    models, examples = phi.shape
    scores = {name: np.empty(phi.shape) for name in VARIANTS}
    for t in range(models):
        shadows = np.arange(models) != t
        fits = []
        for i in range(examples):
            ins = phi[shadows & inside[:, i], i]
            outs = phi[shadows & ~inside[:, i], i]
            fits.append((ins.mean(), ins.std(ddof=1), outs.mean(), outs.std(ddof=1), ins, outs))
        # fixed variance: the within-example spread pooled over all examples for this target
        pooled_in = np.sqrt(sum(((f[4] - f[0]) ** 2).sum() for f in fits) / sum(len(f[4]) - 1 for f in fits))
        pooled_out = np.sqrt(sum(((f[5] - f[2]) ** 2).sum() for f in fits) / sum(len(f[5]) - 1 for f in fits))
        for i, (m_in, s_in, m_out, s_out, _, _) in enumerate(fits):
            x = phi[t, i]
            s_in, s_out = max(s_in, 1e-6), max(s_out, 1e-6)
            scores["online"][t, i] = norm.logpdf(x, m_in, s_in) - norm.logpdf(x, m_out, s_out)
            scores["online_fixed"][t, i] = norm.logpdf(x, m_in, pooled_in) - norm.logpdf(x, m_out, pooled_out)
            scores["offline"][t, i] = norm.logcdf(x, m_out, s_out)
            scores["offline_fixed"][t, i] = norm.logcdf(x, m_out, pooled_out)
            scores["loss"][t, i] = loss[t, i]
    return scores


def tpr_at(fpr: np.ndarray, tpr: np.ndarray, x: float) -> float:
    return float(tpr[np.searchsorted(fpr, x, side="right") - 1])


def roc_line(name: str, members: np.ndarray, nonmembers: np.ndarray) -> tuple[str, float]:
    truth = np.r_[np.ones(members.size), np.zeros(nonmembers.size)]
    scores = np.r_[members.ravel(), nonmembers.ravel()]
    fpr, tpr, _ = roc_curve(truth, scores)
    area = float(roc_auc_score(truth, scores))
    line = f"  {name:28s} AUC {area:.3f}  TPR@0.1% {100 * tpr_at(fpr, tpr, 1e-3):5.1f}%  TPR@1% {100 * tpr_at(fpr, tpr, 1e-2):5.1f}%"
    return line, area


def ensemble_part(args: argparse.Namespace) -> tuple[bool, float, list[nn.Module], np.ndarray]:
    x_a, y_a, x_b, y_b = digits(args.noise, args.seed)
    membership = draw_membership(MembershipConfig(models=args.models, keep=0.5, seed=args.seed), POOL_A)
    start = time.perf_counter()
    models = train_models(
        x_a, y_a, [membership.subset(k) for k in range(args.models)], args.epochs, args.seed
    )
    print(
        f"trained {args.models} ensemble MLPs on halves of {POOL_A} digits in {time.perf_counter() - start:.1f} s"
    )
    ens = EnsembleLogits(membership, logits_of(models, x_a), logits_of(models, x_b), y_a.numpy(), y_b.numpy())

    start = time.perf_counter()
    ours = evaluate_lira(ens, LiraConfig())
    fast = time.perf_counter() - start

    inside = membership.matrix
    given = np.broadcast_to(ens.given, inside.shape)
    start = time.perf_counter()
    phi = logit_confidence(ens.train_logits, given)
    reference = reference_lira(phi, inside, negative_cross_entropy(ens.train_logits, given))
    lines = [roc_line(name, reference[name][inside], reference[name][~inside]) for name in VARIANTS]
    slow = time.perf_counter() - start

    from memloc.locate.classifier.lira_attack import attack_scores, shadow_statistics

    mine = attack_scores(phi, shadow_statistics(phi, inside))
    ok = True
    print(f"every model as target, K={args.models}: memloc {fast:.3f} s, reference {slow:.2f} s")
    for name, (line, area) in zip(VARIANTS, lines, strict=True):
        got = negative_cross_entropy(ens.train_logits, given) if name == "loss" else getattr(mine, name)
        same = (
            np.allclose(got, reference[name], rtol=1e-7, atol=1e-7)
            and abs(ours.variant(name).auc - area) < 1e-9
        )
        ok &= bool(same)
        print(f"{line}  memloc AUC {ours.variant(name).auc:.3f}  equal: {same}")
    return ok, slow / fast, models, inside[0]


def peer_part(args: argparse.Namespace, target: nn.Module, members_mask: np.ndarray) -> None:
    try:
        from privacy_meter.audit import Audit
        from privacy_meter.constants import InferenceGame, MetricEnum
        from privacy_meter.dataset import Dataset
        from privacy_meter.information_source import InformationSource
        from privacy_meter.model import PytorchModelTensor
    except ImportError as err:
        print(f"privacy-meter skipped: {type(err).__name__}: {err}")
        return
    x_a, y_a, x_b, y_b = digits(args.noise, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    halves = [np.sort(rng.permutation(len(y_b))[: len(y_b) // 2]) for _ in range(args.references)]
    references = train_models(x_b, y_b, halves, args.epochs, args.seed + 1000)
    mem, non = torch.as_tensor(members_mask), torch.as_tensor(~members_mask)
    data = Dataset(
        {"train": {"x": x_a[mem], "y": y_a[mem]}, "test": {"x": x_a[non], "y": y_a[non]}},
        default_input="x",
        default_output="y",
    )
    loss = nn.CrossEntropyLoss()
    wrap = [PytorchModelTensor(model_obj=m, loss_fn=loss, batch_size=256) for m in [target, *references]]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as logs:
        audit = Audit(
            metrics=MetricEnum.REFERENCE,
            inference_game_type=InferenceGame.PRIVACY_LOSS_MODEL,
            target_info_sources=InformationSource(models=wrap[:1], datasets=[data]),
            reference_info_sources=InformationSource(models=wrap[1:], datasets=[data]),
            logs_directory_names=[logs],
        )
        audit.prepare()
        result = audit.run()[0][0]
    peer_s = time.perf_counter() - start
    fpr = result.fp / (result.fp + result.tn)
    tpr = result.tp / (result.tp + result.fn)
    order = np.argsort(fpr, kind="stable")
    fpr, tpr = fpr[order], tpr[order]

    start = time.perf_counter()
    target_logits = logits_of([target], x_a)
    ref_logits = logits_of(references, x_a)
    labels = y_a.numpy()
    phi_t = logit_confidence(target_logits, labels[None])[0]
    mu, sigma = out_statistics(
        logit_confidence(ref_logits, np.broadcast_to(labels, ref_logits.shape[:2])),
        np.zeros(ref_logits.shape[:2], bool),
    )
    offline = offline_score(phi_t, mu, sigma)
    fixed = offline_score(phi_t, mu, np.sqrt(np.mean(sigma**2)))  # one σ pooled over the examples
    ours_s = time.perf_counter() - start
    print(
        f"peer: target = ensemble model 0, {args.references} references trained on halves of pool B (all out)"
    )
    print(
        f"  privacy-meter ReferenceMetric  AUC {result.roc_auc:.3f}  TPR@0.1% {100 * tpr_at(fpr, tpr, 1e-3):5.1f}%  "
        f"TPR@1% {100 * tpr_at(fpr, tpr, 1e-2):5.1f}%  ({peer_s:.2f} s, {len(fpr)} thresholds)"
    )
    print(roc_line(f"memloc offline LiRA ({ours_s:.3f} s)", offline[members_mask], offline[~members_mask])[0])
    print(roc_line("memloc offline, fixed variance", fixed[members_mask], fixed[~members_mask])[0])
    loss_score = negative_cross_entropy(target_logits, labels[None])[0]
    print(roc_line("LOSS", loss_score[members_mask], loss_score[~members_mask])[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--references", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ok, ratio, models, members = ensemble_part(args)
    peer_part(args, models[0], members)
    if not ok:
        print("memloc's LiRA and the reference disagree", file=sys.stderr)
        return 1
    print(f"lira vs reference: {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
