"""Example-tied dropout: masks, the test-time drop, training with it, and its report section."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_config
from memloc.core.adapters import ClassifierAdapter
from memloc.core.checkpoints import load_tensors
from memloc.core.classifier.runs import RunFolder
from memloc.core.classifier.splits import RunData
from memloc.core.errors import ConfigError, MemlocError
from memloc.core.hooks import trace
from memloc.core.sites import Site
from memloc.core.training.etd import EtdConfig, EtdLayout
from memloc.core.training.train import TrainConfig, train_run
from memloc.core.training.zoo import ModelSpec, build_model
from test_cli import assert_one_line_error, run_cli
from torch import nn

CPU = torch.device("cpu")


def _mlp_layout(config: EtdConfig = EtdConfig(), seed: int = 0) -> tuple[nn.Module, EtdLayout]:
    torch.manual_seed(0)
    model = build_model(ModelSpec("mlp", (1, 8, 8), 10))
    return model, EtdLayout.build(config, ClassifierAdapter.for_model(model), seed)


def test_masks_do_not_depend_on_batching_and_differ_between_examples():
    _, layout = _mlp_layout()
    fc1 = layout.groups[0]
    ids = torch.arange(300)
    whole = layout.masks(fc1, ids)
    one_at_a_time = torch.cat([layout.masks(fc1, ids[i : i + 1]) for i in range(len(ids))])
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(1))
    shuffled = torch.cat([layout.masks(fc1, chunk) for chunk in torch.tensor_split(ids[perm], 7)])
    assert torch.equal(whole, one_at_a_time)
    assert torch.equal(shuffled, whole[perm])
    assert len({tuple(row.tolist()) for row in whole}) == len(ids)
    # another seed ties other units; another group other units too
    assert not torch.equal(_mlp_layout(seed=1)[1].masks(fc1, ids), whole)
    assert not torch.equal(layout.masks(layout.groups[1], ids), whole)


def test_masks_have_the_declared_fractions_and_share_the_generalization_units():
    _, layout = _mlp_layout(EtdConfig(p_gen=0.25, p_mem=0.3))
    n, ids = 2000, torch.arange(2000)
    for tied in layout.groups:
        units = tied.group.units
        general = tied.general
        assert int(general.sum()) == round(0.25 * units)
        masks, memo = layout.masks(tied, ids), layout.memorization(tied, ids)
        assert masks[:, general].all() and not memo[:, general].any()  # shared by all, never tied
        rest = n * (units - int(general.sum()))
        share = memo.sum().item() / rest
        assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / rest)
        per_unit = memo[:, ~general].float().mean(0)  # every tied unit, not a few, is drawn at p_mem
        assert (per_unit - 0.3).abs().max() < 4.5 * math.sqrt(0.3 * 0.7 / n)


def _hand_set_mlp() -> tuple[nn.Sequential, ClassifierAdapter]:
    """x -> ReLU(x) (four hidden units) -> a linear head with known weights."""
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 2))
    with torch.no_grad():
        model[0][0].weight.copy_(torch.eye(4))
        model[0][0].bias.zero_()
        model[1].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 1.0]]))
        model[1].bias.copy_(torch.tensor([0.5, -0.5]))
    return model, ClassifierAdapter.from_modules(model, [("hidden", "0"), ("head", "1")])


def test_test_time_drop_is_the_network_with_the_memorization_units_zeroed():
    model, adapter = _hand_set_mlp()
    layout = EtdLayout.build(EtdConfig(p_gen=0.5, p_mem=0.5), adapter, seed=3)
    general = layout.groups[0].general
    assert int(general.sum()) == 2
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, 5.0, 0.5, 2.0]])
    kept = torch.relu(x) * general  # the hidden layer is the identity followed by ReLU
    expected = kept @ model[1].weight.T + model[1].bias
    with layout.dropped(model) as seen:
        out = model(x)
    assert torch.equal(seen[Site(0, "out")], kept)
    torch.testing.assert_close(out, expected)
    # by hand for the first example: w . kept + b
    w, b = [1.0, 2.0, 3.0, 4.0], 0.5
    assert out[0, 0].item() == pytest.approx(b + sum(w[u] * (u + 1) for u in range(4) if general[u]))
    assert out[1, 1].item() == pytest.approx(-0.5 + (2.0 if general[3] else 0.0))


def test_train_time_masks_gate_both_the_forward_and_the_gradient():
    model, adapter = _hand_set_mlp()
    layout = EtdLayout.build(EtdConfig(p_gen=0.5, p_mem=0.5), adapter, seed=3)
    ids = torch.tensor([7, 42])
    masks = layout.masks(layout.groups[0], ids)
    x = torch.ones(2, 4)
    with layout.tied(model, ids):
        out = model(x)
    torch.testing.assert_close(out, (torch.relu(x) * masks) @ model[1].weight.T + model[1].bias)
    out[0].sum().backward()  # example 7 alone: its inactive units get no gradient
    grad_rows = model[0][0].weight.grad.abs().sum(1)
    assert torch.equal(grad_rows > 0, masks[0])
    with trace(model, adapter, [Site(0, "out")]) as seen:  # the hooks are gone afterwards
        model(x)
    assert torch.equal(seen[Site(0, "out")], torch.relu(x))


def _etd_config(**overrides) -> TrainConfig:
    return tiny_config(etd=EtdConfig(p_gen=0.5, p_mem=0.2), **overrides)


@pytest.fixture(scope="module")
def etd_run(tmp_path_factory) -> RunFolder:
    run = RunFolder(tmp_path_factory.mktemp("etd") / "mlp")
    train_run(run, _etd_config(), CPU)
    return run


def test_dynamics_record_each_example_under_its_train_time_mask(etd_run):
    model, adapter = etd_run.load_model()
    layout = EtdLayout.build(etd_run.etd(), adapter, etd_run.seed())
    data = RunData.load(etd_run, CPU)
    ids = torch.arange(len(data.given))
    preds = []
    with torch.no_grad():
        for chunk in torch.tensor_split(ids, 5):  # other chunks than the training record used
            with layout.tied(model, chunk):
                preds.append(model(data.x_train[chunk]).argmax(1))
        plain = model(data.x_train).argmax(1)
    dyn = etd_run.load_dynamics()
    assert np.array_equal(dyn.pred[-1], torch.cat(preds).numpy())
    assert not np.array_equal(dyn.pred[-1], plain.numpy())


class SimulatedCrashError(Exception):
    pass


def test_an_interrupted_etd_run_resumes_to_the_same_run(tmp_path, etd_run):
    def stop_in_epoch_2(done, _total, _what):
        if done == 10 + 3:  # ceil(300 / 32) = 10 steps per epoch
            raise SimulatedCrashError

    run = RunFolder(tmp_path / "cut")
    with pytest.raises(SimulatedCrashError):
        train_run(run, _etd_config(), CPU, progress=stop_in_epoch_2)
    assert run.load_state().epoch == 1
    train_run(run, _etd_config(), CPU)
    whole, cut = load_tensors(etd_run.checkpoint(3)), load_tensors(run.checkpoint(3))
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    assert etd_run.dynamics_path.read_bytes() == run.dynamics_path.read_bytes()


def test_etd_changes_training_and_is_stored_in_the_config(etd_run, digits_run):
    assert json.loads(etd_run.config_path.read_text())["train"]["etd"] == {
        "p_gen": 0.5,
        "p_mem": 0.2,
        "layers": None,
    }
    assert etd_run.etd() == EtdConfig(0.5, 0.2)
    same_init = load_tensors(etd_run.checkpoint(0)), load_tensors(digits_run.checkpoint(0))
    assert torch.equal(same_init[0]["head.weight"], same_init[1]["head.weight"])
    etd_final, plain_final = load_tensors(etd_run.checkpoint(3)), load_tensors(digits_run.checkpoint(3))
    assert not torch.equal(etd_final["head.weight"], plain_final["head.weight"])


def test_a_run_without_etd_stores_no_etd_and_loads(digits_run):
    assert "etd" not in json.loads(digits_run.config_path.read_text())["train"]
    assert "etd" not in tiny_config().to_dict()
    assert digits_run.etd() is None


def test_locate_layers_and_report_show_what_dropping_does(etd_run, tmp_path):
    from memloc.locate.classifier.etd_report import etd_figure
    from memloc.locate.classifier.layers import LayersConfig, load_layers, locate_layers
    from memloc.locate.classifier.report import build_report

    result = locate_layers(etd_run, CPU, LayersConfig(rewind_epochs=(0,), retrain=False))
    effect = result.etd
    assert effect is not None and effect.layers == ("fc1", "fc2")
    final = etd_run.summary()  # training measured the tied network
    assert effect.tied.noisy_train_acc == final.noisy_train_acc
    assert effect.tied.clean_train_acc == final.clean_train_acc and effect.tied.test_acc == final.test_acc
    assert effect.full == result.final  # the plain network, as the other tables see it
    assert effect.dropped != effect.tied
    assert load_layers(etd_run).etd == effect
    stored = json.loads((etd_run.root / "locate/layers_report.json").read_text())["results"]["etd"]
    assert stored["dropped"]["noisy_acc"] == effect.dropped.noisy_train_acc

    md, page = build_report(etd_run, tmp_path / "report")
    text = md.read_text()
    assert "## Example-tied dropout" in text and "etd_drop.png" in text and "Maini et al." in text
    assert f"| memorization units dropped | {effect.dropped.clean_train_acc:.3f} |" in text
    assert "Example-tied dropout: Dropping the memorization units" in text
    assert "Example-tied dropout" in page.read_text()
    axes = etd_figure(effect).axes[0]
    assert axes.get_ylabel() == "accuracy" and len(axes.get_legend().get_texts()) == 3
    assert [t.get_text() for t in axes.get_xticklabels()][:2] == ["noisy, given labels", "noisy, true labels"]


def test_a_plain_run_has_no_etd_section(digits_run, tmp_path):
    from memloc.locate.classifier.layers import LayersConfig, locate_layers
    from memloc.locate.classifier.report import build_report

    run = RunFolder(tmp_path / "plain")
    shutil.copytree(digits_run.root, run.root)  # the shared fixture stays without analyses
    assert locate_layers(run, CPU, LayersConfig(rewind_epochs=(0,), retrain=False)).etd is None
    md, _ = build_report(run, tmp_path / "report")
    stored = json.loads((run.root / "locate/layers_report.json").read_text())["results"]
    assert "etd" not in stored and "Example-tied dropout" not in md.read_text()


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"p_gen": 1.5}, "p_gen"),
        ({"p_gen": -0.1}, "p_gen"),
        ({"p_mem": 0.0}, "p_mem"),
        ({"p_mem": 1.0}, "p_mem"),
        ({"layers": ("fc1", "fc1")}, "layers"),
        ({"p_mem": math.nan}, "p_mem"),
    ],
)
def test_bad_fractions_are_config_errors(config, field):
    with pytest.raises(ConfigError) as info:
        EtdConfig(**config)
    assert info.value.field == field


def test_impossible_layouts_name_the_layer():
    for config, needle in [
        (EtdConfig(p_gen=1.0), "no memorization unit"),
        (EtdConfig(p_gen=0.001), "no generalization unit"),
        (EtdConfig(p_gen=0.5, p_mem=0.005), "fewer than 1"),
        (EtdConfig(layers=("head",)), "classifier head"),
    ]:
        with pytest.raises(MemlocError, match=needle):
            _mlp_layout(config)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("--etd-p-gen", "1.5"), ["--etd-p-gen", "[0, 1]"]),
        (("--etd-p-gen", "0.999"), ["layer fc1 has 256 units", "--etd-p-gen", "no memorization unit"]),
        (("--etd-p-mem", "0.001"), ["layer fc1", "--etd-p-mem", "fewer than 1"]),
        (("--etd-layer", "head"), ["classifier head"]),
        (("--etd-layer", "fc9"), ["'fc9'", "fc1, fc2, head"]),
    ],
)
def test_bad_etd_flags_get_one_line_before_anything_is_written(tmp_path, capsys, args, needles):
    cmd = ("train", "--data", "digits", "--arch", "mlp", "--limit", "100", "--epochs", "1", "--etd")
    code, out, err = run_cli(capsys, *cmd, *args, "--out", tmp_path / "r")
    assert_one_line_error(code, err, *needles)
    assert out == "" and not (tmp_path / "r").exists()


def test_etd_flags_without_etd_are_refused(tmp_path, capsys):
    cmd = ("train", "--data", "digits", "--arch", "mlp", "--limit", "100", "--epochs", "1")
    code, _, err = run_cli(capsys, *cmd, "--etd-p-mem", "0.3", "--etd-layer", "fc1", "--out", tmp_path / "r")
    assert_one_line_error(code, err, "--etd-p-mem, --etd-layer", "add --etd")
    assert not (tmp_path / "r").exists()


def test_the_train_command_runs_etd(tmp_path, capsys):
    cmd = ("train", "--data", "digits", "--arch", "mlp", "--limit", "100", "--epochs", "1", "--etd")
    code, _, _ = run_cli(capsys, *cmd, "--etd-p-gen", "0.25", "--etd-layer", "fc2", "--out", tmp_path / "r")
    assert code == 0
    assert RunFolder.open(tmp_path / "r").etd() == EtdConfig(0.25, 0.2, ("fc2",))
