import math

import pytest
import torch
import torch.nn.functional as F
from memloc.core.adapters import ClassifierAdapter
from memloc.core.classifier.gradients import group_stats, split_gradients
from memloc.core.training.zoo import ModelSpec, build_model


def test_clean_and_noisy_parts_sum_to_the_batch_gradient():
    torch.manual_seed(0)
    # float64 so the check is about the split, not about summation order
    model = build_model(ModelSpec("resnet9", (1, 8, 8), 10, 0.125)).double().train()
    x, y = torch.randn(16, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (16,))
    noisy = torch.zeros(16, dtype=torch.bool)
    noisy[[1, 5, 6]] = True
    params = list(model.parameters())
    losses = F.cross_entropy(model(x), y, reduction="none")
    clean_g, noisy_g = split_gradients(losses, noisy, params)
    full = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    for c, n, f in zip(clean_g, noisy_g, full, strict=True):
        torch.testing.assert_close(c + n, f, rtol=1e-10, atol=1e-12)
    # the noisy part is not trivially zero, and differs from the clean part
    assert sum(float(n.norm()) for n in noisy_g) > 0
    assert not torch.allclose(clean_g[0], noisy_g[0])


def test_batch_without_noisy_examples_gives_zero_noisy_part():
    model = build_model(ModelSpec("mlp", (1, 8, 8), 10))
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    params = list(model.parameters())
    losses = F.cross_entropy(model(x), y, reduction="none")
    clean_g, noisy_g = split_gradients(losses, torch.zeros(4, dtype=torch.bool), params)
    assert all(float(n.abs().max()) == 0 for n in noisy_g)
    adapter = ClassifierAdapter.for_model(model)
    index = {id(p): i for i, p in enumerate(params)}
    groups = [[index[id(p)] for p in adapter.group_parameters(model, g.name)] for g in adapter.groups]
    stats = group_stats(clean_g, noisy_g, groups)
    assert all(math.isnan(c) for c in stats.cosine) and stats.noisy_norm == [0.0] * 3


def test_group_stats_by_hand():
    clean = [torch.tensor([3.0, 0.0]), torch.tensor([1.0, 1.0])]
    noisy = [torch.tensor([0.0, 4.0]), torch.tensor([-2.0, -2.0])]
    stats = group_stats(clean, noisy, [[0], [1]])
    assert stats.clean_norm == pytest.approx([3.0 / math.sqrt(2), 1.0])
    assert stats.noisy_norm == pytest.approx([4.0 / math.sqrt(2), 2.0])
    assert stats.cosine == pytest.approx([0.0, -1.0])
