"""Layer rewinding and retraining on small trained runs."""

import json

import pytest
import torch
from memloc.core.checkpoints import load_into
from memloc.core.classifier.splits import RunData
from memloc.core.errors import RunFolderError
from memloc.locate.classifier.layers import LayersConfig, load_layers, locate_layers
from memloc.locate.classifier.rewinding import (
    LayerCell,
    RetrainConfig,
    RewindConfig,
    retrain_group,
    rewind_cells,
    rewound,
)

CPU = torch.device("cpu")


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rewinding_to_the_final_epoch_changes_nothing(cnn_run):
    model, adapter = cnn_run.load_model()
    data = RunData.load(cnn_run, CPU)
    final = data.accuracies(model).table_row()
    before = snapshot(model)
    cells = rewind_cells(model, adapter, data, cnn_run.load_checkpoint, RewindConfig(epochs=(4,)))
    assert len(cells) == len(adapter.groups)
    for cell in cells:
        assert {k: v for k, v in cell.to_dict().items() if k in final} == final
    assert same(before, model.state_dict())


def test_rewinding_every_group_to_epoch_zero_is_the_initial_model(cnn_run):
    model, adapter = cnn_run.load_model()
    data = RunData.load(cnn_run, CPU)
    init_model, _ = cnn_run.load_model(0)
    with rewound(model, adapter, adapter.names, cnn_run.load_checkpoint(0)):
        assert same(model.state_dict(), init_model.state_dict())
        assert data.accuracies(model) == data.accuracies(init_model)
    assert not same(model.state_dict(), init_model.state_dict())


def test_a_cell_equals_rebuilding_the_model_by_hand(cnn_run):
    model, adapter = cnn_run.load_model()
    data = RunData.load(cnn_run, CPU)
    (cell,) = rewind_cells(
        model,
        adapter,
        data,
        cnn_run.load_checkpoint,
        RewindConfig(epochs=(1,)),
        skip=lambda layer, epoch: layer != "conv2",
    )
    fresh, _ = cnn_run.load_model()
    state = fresh.state_dict()
    early = cnn_run.load_checkpoint(1)
    state.update({k: early[k] for k in state if k.startswith("blocks.1.")})
    load_into(fresh, state)
    assert cell == LayerCell.of("conv2", 1, data.accuracies(fresh))


def test_batchnorm_buffers_follow_only_when_asked(cnn_run):
    model, adapter = cnn_run.load_model()
    early = cnn_run.load_checkpoint(1)
    with rewound(model, adapter, ["conv1"], early, bn_buffers=False):
        assert torch.equal(model.blocks[0].conv.weight, early["blocks.0.conv.weight"])
        assert not torch.equal(model.blocks[0].bn.running_mean, early["blocks.0.bn.running_mean"])
    with rewound(model, adapter, ["conv1"], early, bn_buffers=True):
        assert torch.equal(model.blocks[0].bn.running_mean, early["blocks.0.bn.running_mean"])


def test_retraining_leaves_every_other_tensor_bit_identical(cnn_run):
    model, adapter = cnn_run.load_model()
    data = RunData.load(cnn_run, CPU)
    before = snapshot(model)
    init = cnn_run.load_checkpoint(0)
    rows = retrain_group(model, adapter, data, init, "conv2", RetrainConfig(epochs=2))
    after = model.state_dict()
    group = set(adapter.group_keys("conv2", after))
    assert group == {k for k in after if k.startswith("blocks.1.")}
    for key in after:
        if key not in group:
            assert torch.equal(after[key], before[key]), key
    assert not torch.equal(after["blocks.1.conv.weight"], init["blocks.1.conv.weight"])
    assert not torch.equal(after["blocks.1.conv.weight"], before["blocks.1.conv.weight"])
    assert [r.epoch for r in rows] == [0, 1, 2]
    assert all(p.requires_grad for p in model.parameters())


def test_retraining_uses_only_clean_examples(cnn_run, monkeypatch):
    model, adapter = cnn_run.load_model()
    data = RunData.load(cnn_run, CPU)
    seen = []
    forward = type(model).forward

    def spy(self, x):
        if torch.is_grad_enabled():
            seen.append(x)
        return forward(self, x)

    monkeypatch.setattr(type(model), "forward", spy)
    retrain_group(model, adapter, data, cnn_run.load_checkpoint(0), "head", RetrainConfig(epochs=1))
    trained = torch.cat(seen)
    clean = data.x_train[~data.noisy]
    assert len(trained) == len(clean)
    assert torch.equal(trained.sum(0), clean.sum(0))  # a permutation of the clean examples


def test_locate_layers_is_resumable_and_reports_every_table(cnn_run):
    config = LayersConfig(rewind_epochs=(0, 2), retrain_epochs=1)
    result = locate_layers(cnn_run, CPU, config)
    assert len(result.rewinding) == 4 * 2
    assert len(result.gradients) == 4 * 4
    assert {r.layer for r in result.retraining} == {"conv1", "conv2", "fc1", "head"}
    assert list(result.rewinding[0].to_dict()) == [
        "layer",
        "epoch",
        "clean_acc",
        "noisy_acc",
        "noisy_orig_acc",
        "test_acc",
    ]
    calls = []
    again = locate_layers(cnn_run, CPU, config, progress=lambda d, t, s: calls.append(s))
    assert not any(s.startswith(("rewind ", "retrain ")) for s in calls)
    assert again.results_dict() == result.results_dict()
    stored = json.loads((cnn_run.root / "locate/layers_report.json").read_text())
    assert stored["results"]["rewinding"] == [c.to_dict() for c in result.rewinding]
    assert load_layers(cnn_run) == again  # the stored report reads back into the same result


def test_bad_epochs_and_layers(cnn_run):
    with pytest.raises(RunFolderError, match=r"epoch 99 is not in .*available epochs: 0-4"):
        locate_layers(cnn_run, CPU, LayersConfig(rewind_epochs=(0, 99)))
    with pytest.raises(Exception, match="valid layers: conv1, conv2, fc1, head"):
        locate_layers(cnn_run, CPU, LayersConfig(layers=("conv9",)))
