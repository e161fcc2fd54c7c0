import pytest
import torch
from memloc.core.adapters import ClassifierAdapter
from memloc.core.hooks import patch, trace
from memloc.core.sites import Site
from torch import nn


def toy():
    """y = W2 relu(W1 x) with hand-set weights: unit j of the hidden layer carries x_j."""
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 4.0]]))
        model[2].bias.zero_()
    return model, ClassifierAdapter.from_modules(model, [("hidden", "0"), ("head", "2")])


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_trace_records_module_output():
    model, adapter = toy()
    x = torch.tensor([[1.0, -2.0, 3.0]])
    with trace(model, adapter, [Site(0, "out"), Site(1, "out")]) as seen:
        y = model(x)
    assert torch.equal(seen[Site(0, "out")], x)
    assert torch.equal(seen[Site(1, "out")], y)
    assert hook_count(model) == 0


def test_patch_rewrites_activation_exactly():
    model, adapter = toy()
    x = torch.tensor([[1.0, 1.0, 1.0]])
    assert model(x).tolist() == [[3.0, 4.0]]

    def drop_unit_1(a):
        a = a.clone()
        a[:, 1] = 0
        return a

    with patch(model, adapter, {Site(0, "out"): drop_unit_1}):
        assert model(x).tolist() == [[1.0, 4.0]]
    assert model(x).tolist() == [[3.0, 4.0]]


def test_hooks_removed_when_body_raises():
    model, adapter = toy()
    with pytest.raises(RuntimeError, match="boom"), patch(model, adapter, {Site(0, "out"): lambda a: a * 0}):
        assert hook_count(model) == 1
        raise RuntimeError("boom")
    assert hook_count(model) == 0
    with pytest.raises(ValueError), trace(model, adapter, [Site(0, "out"), Site(1, "out")]):
        assert hook_count(model) == 2
        raise ValueError
    assert hook_count(model) == 0


def test_trace_without_detach_keeps_graph():
    model, adapter = toy()
    x = torch.tensor([[1.0, 2.0, 3.0]])
    with trace(model, adapter, [Site(0, "out")], detach=False) as seen:
        y = model(x).sum()
    (grad,) = torch.autograd.grad(y, seen[Site(0, "out")])
    assert grad.tolist() == [[1.0, 2.0, 4.0]]


class Counted(nn.Module):
    """Wraps a module and counts its forward calls."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


def test_trace_with_stop_runs_nothing_after_the_last_site():
    model = nn.Sequential(*(Counted(nn.Linear(3, n)) for n in (3, 3, 2)))
    adapter = ClassifierAdapter.from_modules(model, [("a", "0"), ("b", "1"), ("c", "2")])
    x = torch.tensor([[1.0, -2.0, 3.0]])
    after = []
    # Sites in any order: the pass stops once both are read, i.e. after module 1.
    with trace(model, adapter, [Site(1, "out"), Site(0, "out")], stop=True) as seen:
        model(x)
        after.append("body went on")
    assert [m.calls for m in model] == [1, 1, 0]
    assert after == []
    torch.testing.assert_close(seen[Site(1, "out")], model[1].inner(model[0].inner(x)))
    assert hook_count(model) == 0
    with trace(model, adapter, [Site(1, "out")]) as seen:
        model(x)
    assert [m.calls for m in model] == [2, 2, 1]
