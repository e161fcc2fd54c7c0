import base64
import re

import numpy as np
import pytest
import torch
from memloc.core.errors import MemlocError
from memloc.locate.classifier.layers import LayersConfig, locate_layers
from memloc.locate.classifier.report import build_report
from memloc.locate.classifier.scores import (
    CurvatureConfig,
    auroc,
    cumulative_sample_loss,
    forgetting_events,
    learning_time,
    locate_scores,
    loss_curvature,
)

# rows: epoch 0 (init) then epochs 1..4; columns: four examples
CORRECT = np.array(
    [
        [1, 1, 0, 0],  # init: ignored
        [1, 0, 1, 0],
        [0, 1, 1, 1],
        [1, 1, 0, 1],
        [1, 1, 1, 0],
    ],
    dtype=bool,
)


def test_cumulative_sample_loss_sums_trained_epochs():
    loss = np.arange(20, dtype=np.float32).reshape(5, 4)
    assert cumulative_sample_loss(loss).tolist() == [
        4 + 8 + 12 + 16,
        5 + 9 + 13 + 17,
        6 + 10 + 14 + 18,
        7 + 11 + 15 + 19,
    ]


def test_forgetting_events_hand_counted():
    # ex0: 1,0,1,1 -> one; ex1: 0,1,1,1 -> none; ex2: 1,1,0,1 -> one; ex3: 0,1,1,0 -> one
    assert forgetting_events(CORRECT).tolist() == [1, 0, 1, 1]


def test_learning_time_hand_counted():
    # ex0 stays correct from epoch 3; ex1 from 2; ex2 from 4; ex3 never (E + 1 = 5)
    assert learning_time(CORRECT).tolist() == [3, 2, 4, 5]


def test_auroc_of_a_perfect_score_is_one():
    noisy = np.array([0, 1, 0, 1, 1, 0], dtype=bool)
    assert auroc(noisy.astype(float) * 3 + 1, noisy) == 1.0
    assert auroc(-noisy.astype(float), noisy) == 0.0
    with pytest.raises(MemlocError, match="both noisy and clean"):
        auroc(np.ones(3), np.ones(3, dtype=bool))


def test_curvature_of_a_linear_model_is_small_and_seeded():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.randn(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    a = loss_curvature(model, x, y, CurvatureConfig(samples=4, seed=1))
    b = loss_curvature(model, x, y, CurvatureConfig(samples=4, seed=1, batch_size=2))
    np.testing.assert_allclose(a, b, rtol=1e-3)  # float32 finite differences: rounding only
    # Softmax curvature is bounded: the gradient moves by at most O(h * ||W||^2 * ||v||).
    bound = 1e-3 * float(model[1].weight.detach().norm()) ** 2 * 2.0
    assert (a > 0).all() and (a < bound).all()


def test_scores_and_report_on_a_trained_run(cnn_run):
    result = locate_scores(cnn_run, torch.device("cpu"), curvature=CurvatureConfig(samples=2))
    aurocs = result.auroc
    assert set(aurocs) == {"csl", "forgetting", "learning_time", "curvature"}
    assert all(0.0 <= v <= 1.0 for v in aurocs.values())
    with np.load(cnn_run.root / "locate/scores.npz") as z:
        assert z["csl"].shape == (300,) and z["noisy"].sum() == 60
    locate_layers(cnn_run, torch.device("cpu"), LayersConfig(rewind_epochs=(0, 2), retrain_epochs=1))
    md, page = build_report(cnn_run)
    html = page.read_text()
    figures = dict(
        re.findall(r"<figure id='fig-([\w-]+)'><img alt='[\w-]+' src='data:image/png;base64,([^']+)'", html)
    )
    expected = {
        "training",
        "rewinding_heatmaps",
        "retraining_curves",
        "gradients",
        "score_histograms",
        "score_roc",
    }
    assert set(figures) == expected
    for stem, data in figures.items():
        png = base64.b64decode(data)
        assert png.startswith(b"\x89PNG") and len(png) > 5000, stem
        assert (md.parent / "figures" / f"{stem}.png").stat().st_size == len(png)
    assert "No single layer removes memorization" in html or "removes memorization (noisy" in html
    assert "AUROC" in md.read_text()
