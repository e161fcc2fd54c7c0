"""Adapter cards of Hugging Face image classifiers: groups, exact unit masking, CLI."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_config
from memloc.core.adapters import IMAGE_CARDS, ClassifierAdapter, LayerGroup
from memloc.core.classifier.hf_models import image_model_from_config
from memloc.core.classifier.runs import RunFolder
from memloc.core.classifier.units import scale_units
from memloc.core.errors import UnsupportedModelError
from memloc.core.hooks import patch, trace
from memloc.core.sites import Site
from memloc.core.training.train import train_run
from memloc.core.training.zoo import ModelSpec, build_model
from memloc.locate.classifier.unit_search import UnitSpace, zeroed_weights
from test_cli import assert_one_line_error, run_cli
from tiny_images import CONFIGS, INPUT_SHAPE, NUM_CLASSES, tiny_model
from torch import nn

X = torch.randn(4, *INPUT_SHAPE, generator=torch.Generator().manual_seed(1))


def _masked(
    model: nn.Module, adapter: ClassifierAdapter, site: Site, group: LayerGroup, unit: int
) -> torch.Tensor:
    mask = torch.ones(group.units)
    mask[unit] = 0.0
    with torch.no_grad(), patch(model, adapter, {site: lambda a: scale_units(a, mask, group)}):
        return model(X)


@pytest.mark.parametrize("model_type", ["vit", "deit"])
def test_encoder_groups_follow_the_config(model_type):
    config = CONFIGS[model_type]()
    adapter = ClassifierAdapter.for_model(tiny_model(model_type), heads=True)
    layers = config["num_hidden_layers"]
    expected = [f"layer{i}.{part}" for i in range(layers) for part in ("heads", "attn", "mlp")] + ["head"]
    assert adapter.names == expected
    heads, mlp = adapter.group("layer1.heads"), adapter.group("layer1.mlp")
    assert (heads.units, heads.unit_size, heads.unit_kind) == (
        config["num_attention_heads"],
        config["hidden_size"] // config["num_attention_heads"],
        "head",
    )
    assert (mlp.units, mlp.io, mlp.unit_axis) == (config["intermediate_size"], "input", -1)
    assert adapter.group("layer0.attn").units == config["hidden_size"]
    assert adapter.group("head").units == NUM_CLASSES
    plain = ClassifierAdapter.for_model(tiny_model(model_type))
    assert plain.names == [n for n in expected if not n.endswith(".heads")]


@pytest.mark.parametrize("model_type", ["resnet", "convnext"])
def test_stage_groups_follow_the_config(model_type):
    config = CONFIGS[model_type]()
    model = tiny_model(model_type)
    adapter = ClassifierAdapter.for_model(model, heads=True)  # no heads to add: same groups
    expected = [
        (f"stage{s}.block{b}", size)
        for s, (depth, size) in enumerate(zip(config["depths"], config["hidden_sizes"], strict=True))
        for b in range(depth)
    ] + [("head", NUM_CLASSES)]
    assert [(g.name, g.units) for g in adapter.groups] == expected
    state = model.state_dict()
    block = adapter.group("stage1.block0")
    keys = adapter.group_keys("stage1.block0", state)
    own = [k for k in state if k.startswith(block.module + ".")]
    assert own and set(own) <= set(keys)
    assert any("norm" in k for k in keys)  # the block's norms rewind with it


@pytest.mark.parametrize("model_type", ["vit", "deit"])
def test_masking_an_mlp_neuron_equals_zeroing_its_column(model_type):
    model = tiny_model(model_type)
    adapter = ClassifierAdapter.for_model(model)
    site, j = adapter.site("layer1.mlp"), 5
    masked = _masked(model, adapter, site, adapter.group(site), j)
    fc2 = model.get_submodule(adapter.group(site).module)
    with torch.no_grad():
        fc2.weight[:, j] = 0.0
        zeroed = model(X)
    assert torch.allclose(masked, zeroed, atol=1e-6)
    assert not torch.allclose(masked, tiny_model(model_type)(X), atol=1e-4)


def test_masking_a_head_equals_zeroing_its_input_columns():
    model = tiny_model("vit")
    adapter = ClassifierAdapter.for_model(model, heads=True)
    site, h = adapter.site("layer0.heads"), 1
    group = adapter.group(site)
    masked = _masked(model, adapter, site, group, h)
    o_proj = model.get_submodule(group.module)
    with torch.no_grad():
        o_proj.weight[:, h * group.unit_size : (h + 1) * group.unit_size] = 0.0
        zeroed = model(X)
    assert torch.allclose(masked, zeroed, atol=1e-6)
    assert not torch.allclose(masked, tiny_model("vit")(X), atol=1e-4)


def test_a_heads_weights_are_its_value_rows():
    """The weights mode: a head's mask at its pre site (the value projection) and its zeroed
    value rows give the same model, and both equal masking the head itself."""
    model = tiny_model("vit")
    adapter = ClassifierAdapter.for_model(model, heads=True)
    name, h = "layer1.heads", 0
    group = adapter.group(name)
    at_head = _masked(model, adapter, adapter.site(name), group, h)
    pre = Site(adapter.names.index(name), "pre")
    at_value = _masked(model, adapter, pre, group.at_pre(), h)
    with torch.no_grad(), zeroed_weights(model, adapter, [(name, h)]):
        zeroed = model(X)
    assert torch.allclose(at_head, at_value, atol=1e-6) and torch.allclose(at_head, zeroed, atol=1e-6)
    assert torch.allclose(model(X), tiny_model("vit")(X))  # weights restored


@pytest.mark.parametrize("model_type", ["resnet", "convnext"])
def test_masking_a_channel_zeroes_it_and_only_it(model_type):
    model = tiny_model(model_type)
    adapter = ClassifierAdapter.for_model(model)
    site, c = adapter.site("stage1.block1"), 2
    group = adapter.group(site)
    with torch.no_grad(), trace(model, adapter, [site]) as plain:
        model(X)
    mask = torch.ones(group.units)
    mask[c] = 0.0
    with torch.no_grad(), patch(model, adapter, {site: lambda a: scale_units(a, mask, group)}) as seen:
        model(X)
    out, ref = seen[site], plain[site]
    assert out.dim() == 4 and out.shape[1] == group.units
    assert torch.all(out[:, c] == 0) and not torch.all(ref[:, c] == 0)
    keep = [i for i in range(group.units) if i != c]
    assert torch.equal(out[:, keep], ref[:, keep])


@pytest.mark.parametrize("model_type", ["resnet", "convnext"])
def test_masking_a_channel_before_the_norm_equals_zeroing_its_weights(model_type):
    """The pre site is the unit layer's output; ConvNeXt's is a channels-last linear."""
    model = tiny_model(model_type)
    adapter = ClassifierAdapter.for_model(model)
    name = "stage1.block0"
    group = adapter.group(name)
    pre = Site(adapter.names.index(name), "pre")
    changed = 0
    for c in range(group.units):
        masked = _masked(model, adapter, pre, group.at_pre(), c)
        with torch.no_grad(), zeroed_weights(model, adapter, [(name, c)]):
            zeroed = model(X)
        assert torch.allclose(masked, zeroed, atol=1e-6), c
        changed += not torch.allclose(masked, model(X), atol=1e-5)
    assert changed  # a ReLU may hide some channels on these inputs, never all of them


def test_version_4_module_names_are_read_too():
    """transformers 4 named a ViT's layers vit.encoder.layer.{i}.attention.output.dense, ..."""

    def child(**parts: nn.Module) -> nn.Module:
        module = nn.Module()
        for key, value in parts.items():
            setattr(module, key, value)
        return module

    def layer() -> nn.Module:
        return child(
            attention=child(attention=child(value=nn.Linear(8, 8)), output=child(dense=nn.Linear(8, 8))),
            intermediate=child(dense=nn.Linear(8, 12)),
            output=child(dense=nn.Linear(12, 8)),
            layernorm_before=nn.LayerNorm(8),
            layernorm_after=nn.LayerNorm(8),
        )

    model = child(
        vit=child(encoder=child(layer=nn.ModuleList([layer(), layer()]))), classifier=nn.Linear(8, 3)
    )
    model.config = SimpleNamespace(model_type="vit", num_attention_heads=4)
    adapter = ClassifierAdapter.for_model(model, heads=True)
    heads, mlp = adapter.group("layer1.heads"), adapter.group("layer1.mlp")
    assert (heads.module, heads.units, heads.unit_size) == (
        "vit.encoder.layer.1.attention.output.dense",
        4,
        2,
    )
    assert (mlp.module, mlp.unit_module, mlp.units) == (
        "vit.encoder.layer.1.output.dense",
        "vit.encoder.layer.1.intermediate.dense",
        12,
    )
    assert "vit.encoder.layer.1.output.dense.weight" in adapter.group_keys("layer1.mlp", model.state_dict())


def test_an_unsupported_model_type_lists_the_supported_ones():
    model = nn.Linear(2, 2)
    model.config = SimpleNamespace(model_type="swin")
    with pytest.raises(UnsupportedModelError) as info:
        ClassifierAdapter.for_model(model)
    message = str(info.value)
    assert "'swin'" in message and "\n" not in message
    assert all(t in message for t in IMAGE_CARDS) and set(IMAGE_CARDS) == set(CONFIGS)


def test_the_zoo_vit_takes_its_groups_from_the_card():
    model = build_model(ModelSpec("vit", (1, 8, 8), 10, 0.25))
    assert model.config.patch_size == 2 and model.config.hidden_size == 16
    assert build_model(ModelSpec("vit", (1, 28, 28), 10, 0.25)).config.patch_size == 4
    adapter = ClassifierAdapter.for_model(model, heads=True)
    assert len(adapter.names) == 4 * 3 + 1
    assert (adapter.group("layer3.heads").units, adapter.group("layer3.heads").unit_size) == (4, 4)
    assert adapter.group("layer3.mlp").units == 64
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_models_inspect_reads_a_saved_folder(model_type, tmp_path, capsys):
    model = tiny_model(model_type)
    model.save_pretrained(tmp_path / model_type)
    code, out, _ = run_cli(capsys, "models", "inspect", tmp_path / model_type, "--heads", "--format", "json")
    assert code == 0
    info = json.loads(out)
    expected = ClassifierAdapter.for_model(model, heads=True)
    assert info["model_type"] == model_type and info["weights"] is True
    assert [(g["name"], g["units"], g["unit_kind"], g["io"]) for g in info["layers"]] == [
        (g.name, g.units, g.unit_kind, g.io) for g in expected.groups
    ]
    assert info["parameters"] == sum(p.numel() for p in model.parameters())


def test_models_inspect_builds_a_factory(capsys):
    code, out, _ = run_cli(
        capsys, "models", "inspect", "--model", "tiny_images:small_net", "--model-args", '{"width": 5}',
        "--input-shape", "1,8,8", "--format", "json",
    )  # fmt: skip
    assert code == 0
    info = json.loads(out)
    assert info["classes"] == NUM_CLASSES and info["input_shape"] == [1, 8, 8]
    assert [(g["name"], g["units"], g["unit_kind"]) for g in info["layers"]] == [
        ("0", 5, "channel"),
        ("3", 3, "feature"),
    ]
    code, out, _ = run_cli(
        capsys,
        "models",
        "inspect",
        "--model",
        "tiny_images:small_net",
        "--groups",
        '["0"]',
        "--format",
        "json",
    )
    assert code == 0 and [g["name"] for g in json.loads(out)["layers"]] == ["0"]
    code, _, err = run_cli(
        capsys, "models", "inspect", "--model", "tiny_images:small_net", "--input-shape", "3,5,5"
    )
    assert_one_line_error(code, err, "input shape (3, 5, 5)")


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory) -> RunFolder:
    run = RunFolder(tmp_path_factory.mktemp("runs") / "digits-vit")
    train_run(run, tiny_config(arch="vit", width=0.25, epochs=2, limit=120, lr=3e-3), torch.device("cpu"))
    return run


def test_locate_neurons_searches_heads(vit_run, capsys):
    args = ("--examples", "noisy", "--n", "3", "--max-units", "30", "--format", "json")
    code, out, err = run_cli(capsys, "locate", "neurons", vit_run.root, "--heads", *args)
    assert code == 0, err
    assert json.loads(out)["noisy"]["examples"] == 3
    stored = json.loads((vit_run.root / "locate/neurons.config.json").read_text())
    assert stored["flip"]["heads"] is True
    model, _ = vit_run.load_model()
    space = UnitSpace(ClassifierAdapter.for_model(model, heads=True), "mask", include_head=False)
    records = [json.loads(line) for line in (vit_run.root / "locate/neurons.jsonl").read_text().splitlines()]
    assert len(records) == 3
    assert all(layer in space.layers for r in records for layer, _ in r["units"])
    assert "layer0.heads" in space.layers and space.total == 4 * (4 + 16 + 64)


def test_locate_neurons_heads_on_a_model_without_heads(digits_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(digits_run.root, copy)
    shutil.rmtree(copy / "locate", ignore_errors=True)
    code, _, err = run_cli(capsys, "locate", "neurons", copy, "--heads", "--n", "2")
    assert_one_line_error(code, err, "no attention heads")
    assert not (copy / "locate").exists()


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_every_parameter_belongs_to_one_group(model_type):
    """Rewinding or retraining every group touches each parameter exactly once."""
    model = tiny_model(model_type)
    adapter = ClassifierAdapter.for_model(model)
    params = dict(model.named_parameters())
    owned = [k for g in adapter.groups for k in adapter.group_keys(g.name, params)]
    assert sorted(owned) == sorted(params)


def test_a_deit_config_without_architectures_builds_the_plain_classifier():
    """DeiT maps to two classes (with and without a distillation head); a hand-written
    config.json naming neither used to end in a TypeError inside transformers."""
    config = {k: v for k, v in CONFIGS["deit"]().items() if k != "architectures"}
    model = image_model_from_config(config)
    assert type(model).__name__ == "DeiTForImageClassificationLogits"
    assert ClassifierAdapter.for_model(model).group("head").units == NUM_CLASSES
