import pytest
import torch
from memloc.core.adapters import ClassifierAdapter, LayerNotFoundError
from memloc.core.errors import UnsupportedModelError
from memloc.core.hooks import trace
from memloc.core.sites import Site
from memloc.core.training.zoo import ARCHS, ModelSpec, build_model, default_width
from torch import nn


@pytest.mark.parametrize("arch", ARCHS)
def test_zoo_groups_count_the_units_of_each_block(arch):
    model = build_model(ModelSpec(arch, (1, 28, 28), 10, default_width(arch)))
    adapter = ClassifierAdapter.for_model(model)
    x = torch.randn(3, 1, 28, 28)
    sites = [adapter.site(g.name) for g in adapter.groups]
    with trace(model, adapter, sites) as seen:
        model.eval()(x)
    for g, site in zip(adapter.groups, sites, strict=True):
        # the units lie where the group declares them (the ViT's on the last axis of its input)
        assert seen[site].shape[g.unit_axis] == g.units * g.unit_size, g.name
    assert adapter.groups[-1].name == "head" and adapter.groups[-1].units == 10
    # every parameter belongs to exactly one group
    owned = [n for g in adapter.groups for n in adapter.group_keys(g.name, dict(model.named_parameters()))]
    assert sorted(owned) == sorted(n for n, _ in model.named_parameters())


def test_resnet9_groups_include_batchnorm_buffers():
    model = build_model(ModelSpec("resnet9", (1, 28, 28), 10, 0.25))
    adapter = ClassifierAdapter.for_model(model)
    keys = adapter.group_keys("layer1.res1", model.state_dict())
    assert "blocks.2.bn.running_mean" in keys and "blocks.2.conv.weight" in keys
    assert all(k.startswith("blocks.2.") for k in keys)
    assert len(adapter.groups) == 9


def test_explicit_groups_over_any_module():
    model = nn.Sequential(
        nn.Conv2d(1, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 6 * 6, 3)
    )
    adapter = ClassifierAdapter.from_modules(model, [("conv", "0", ["1"]), ("fc", "4")])
    assert [(g.name, g.units, g.unit_kind) for g in adapter.groups] == [
        ("conv", 5, "channel"),
        ("fc", 3, "feature"),
    ]
    assert "1.running_var" in adapter.group_keys("conv", model.state_dict())
    assert adapter.site("fc") == Site(1, "out")
    assert adapter.hook_point(Site(0, "out")).module == "0"


def test_unknown_layer_lists_the_valid_ones():
    adapter = ClassifierAdapter.for_model(build_model(ModelSpec("cnn", (1, 8, 8), 10)))
    with pytest.raises(LayerNotFoundError, match="valid layers: conv1, conv2, fc1, head"):
        adapter.group("conv9")
    with pytest.raises(LayerNotFoundError):
        adapter.group(4)


def test_model_without_groups_is_refused():
    with pytest.raises(UnsupportedModelError, match="from_modules"):
        ClassifierAdapter.for_model(nn.Linear(2, 2))
