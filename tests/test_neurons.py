"""The greedy flip search: exact answers on a toy, and its guarantees on a trained CNN."""

import json
import shutil

import pytest
import torch
from memloc.core.adapters import ClassifierAdapter
from memloc.core.classifier.splits import RunData
from memloc.core.errors import ConfigError
from memloc.locate.classifier.unit_search import FlipConfig, FlipData, UnitSpace, flip_search, zeroed_weights
from torch import nn

CPU = torch.device("cpu")


def toy():
    """hidden = x; logit0 = 3 h0 + h1 + h2; logit1 = 3.5.

    For x = (1, 1, 1) the prediction is 0 (logit 5). Removing h0 alone gives 2 < 3.5;
    removing h1 or h2 alone gives 4 > 3.5. So {h0} is the unique smallest flip set.
    """
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[3.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
        model[2].bias.copy_(torch.tensor([0.0, 3.5]))
    adapter = ClassifierAdapter.from_modules(model, [("hidden", "0"), ("head", "2")])
    x = torch.tensor([[1.0, 1.0, 1.0]] + [[0.0, 0.0, 0.0]] * 6)
    y = torch.tensor([0] + [1] * 6)
    data = FlipData(x, y, torch.arange(1, 7), x[1:], y[1:])
    return model.eval(), adapter, data


@pytest.mark.parametrize("mode", ["mask", "weights"])
def test_toy_finds_the_unique_minimal_set(mode):
    model, adapter, data = toy()
    (result,) = flip_search(model, adapter, data, [0], FlipConfig(mode=mode, reference_size=4))
    assert result.flipped and result.units == [("hidden", 0)] and result.reason == "flipped"
    assert result.collateral_drop == 0.0


def test_toy_cap_and_budget():
    model, adapter, data = toy()
    with torch.no_grad():
        model[2].weight[0, 0] = 1.0  # now every unit is needed: logit0 = 3 vs 3.5 needs... two removals
        model[2].bias[1] = 1.5
    (capped,) = flip_search(model, adapter, data, [0], FlipConfig(max_units=1, reference_size=4))
    assert not capped.flipped and capped.reason == "cap" and len(capped.units) == 1
    (free,) = flip_search(model, adapter, data, [0], FlipConfig(max_units=5, reference_size=4))
    assert free.flipped and len(free.units) == 2


def test_toy_collateral_budget_rejects_a_unit_the_hold_out_set_needs():
    model, adapter, data = toy()
    # Hold-out example (2, 0, 0) is class 0 only through h0 (logit0 6 > 3.5, 0 without h0):
    # removing h0 costs 1 of 4 hold-out examples, 25 points.
    x_hold = torch.tensor([[2.0, 0.0, 0.0]] + [[0.0, 0.0, 0.0]] * 3)
    y_hold = torch.tensor([0, 1, 1, 1])
    data = FlipData(data.x, data.y, data.clean, x_hold, y_hold)
    (loose,) = flip_search(model, adapter, data, [0], FlipConfig(collateral=30.0, reference_size=4))
    assert loose.flipped and loose.units == [("hidden", 0)] and loose.collateral_drop == pytest.approx(25.0)
    (tight,) = flip_search(model, adapter, data, [0], FlipConfig(collateral=5.0, reference_size=4))
    assert tight.flipped and sorted(tight.units) == [("hidden", 1), ("hidden", 2)]
    assert tight.collateral_drop <= 5.0


@pytest.fixture(scope="module")
def cnn_setup(cnn_run):
    model, adapter = cnn_run.load_model()
    data = RunData.load(cnn_run, CPU)
    flip_data = FlipData(
        data.x_train, data.given, torch.nonzero(~data.noisy).flatten(), data.x_test[:200], data.y_test[:200]
    )
    noisy = torch.nonzero(data.noisy).flatten()[:4].tolist()
    clean = torch.nonzero(~data.noisy).flatten()[:4].tolist()
    return model, adapter, flip_data, noisy + clean


def hold_drop(model, adapter, data, units, mode):
    space = UnitSpace(adapter, mode, include_head=False)
    with torch.no_grad():
        base = int((model(data.x_hold).argmax(1) == data.y_hold).sum())
        mask = torch.ones(1, space.total)
        mask[0, [space.flat(layer, i) for layer, i in units]] = 0
        with space.masked(model, mask.expand(len(data.x_hold), -1)):
            correct = int((model(data.x_hold).argmax(1) == data.y_hold).sum())
    return 100 * (base - correct) / len(data.x_hold)


@pytest.mark.parametrize("mode", ["mask", "weights"])
def test_model_is_unchanged_and_sets_are_minimal(cnn_setup, mode):
    model, adapter, data, targets = cnn_setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logits = model(data.x[:50]).detach()
    results = flip_search(model, adapter, data, targets, FlipConfig(mode=mode, max_units=60, batch_size=3))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(model(data.x[:50]).detach(), logits)
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    space = UnitSpace(adapter, mode, include_head=False)
    flipped = [r for r in results if r.flipped]
    assert flipped
    for r in flipped:
        assert len(r.units) <= 60
        assert hold_drop(model, adapter, data, r.units, mode) <= 5.0 + 1e-9
        flat = [space.flat(layer, i) for layer, i in r.units]
        # zeroing the set flips; restoring any single unit of it un-flips
        masks = torch.ones(len(flat) + 1, space.total)
        masks[:, flat] = 0
        for row, u in enumerate(flat):
            masks[row + 1, u] = 1
        x = data.x[r.index : r.index + 1].expand(len(masks), *data.x.shape[1:])
        with torch.no_grad(), space.masked(model, masks):
            pred = model(x).argmax(1)
        assert pred[0] != data.y[r.index]
        for row, _ in enumerate(flat):
            if pred[row + 1] != data.y[r.index]:  # still flipped: then restoring it must break the budget
                rest = [u for u in r.units if u != r.units[row]]
                assert hold_drop(model, adapter, data, rest, mode) > 5.0, r
        if mode == "weights":
            with zeroed_weights(model, adapter, r.units), torch.no_grad():
                assert model(data.x[r.index : r.index + 1]).argmax(1) != data.y[r.index]


def test_batched_equals_one_at_a_time(cnn_setup):
    model, adapter, data, targets = cnn_setup
    config = FlipConfig(max_units=60)
    batched = flip_search(model, adapter, data, targets, config)
    single = flip_search(model, adapter, data, targets, FlipConfig(max_units=60, batch_size=1))
    assert [(r.index, r.flipped, r.units) for r in batched] == [(r.index, r.flipped, r.units) for r in single]


def test_collateral_budget_is_respected(cnn_setup):
    model, adapter, data, targets = cnn_setup
    results = flip_search(model, adapter, data, targets, FlipConfig(max_units=60, collateral=0.5))
    for r in results:
        if r.flipped:
            assert r.collateral_drop <= 0.5
            assert hold_drop(model, adapter, data, r.units, "mask") <= 0.5 + 1e-9


def test_pre_mask_equals_zeroed_weights(cnn_setup):
    model, adapter, data, _ = cnn_setup
    space = UnitSpace(adapter, "weights", include_head=False)
    units = [("conv1", 3), ("conv2", 10), ("conv2", 11), ("fc1", 7)]
    mask = torch.ones(1, space.total)
    mask[0, [space.flat(layer, i) for layer, i in units]] = 0
    x = data.x[:20]
    with torch.no_grad():
        with space.masked(model, mask.expand(20, -1)):
            masked = model(x)
        with zeroed_weights(model, adapter, units):
            zeroed = model(x)
    torch.testing.assert_close(masked, zeroed, rtol=1e-5, atol=1e-6)


def test_bad_configs():
    for fields, needle in [
        ({"max_units": 0}, "^max_units must be at least 1"),
        ({"mode": "gradient"}, "^mode must be one of mask, weights"),
        ({"collateral": -1}, "^collateral must be at least 0"),
        ({"batch_size": 0}, "^batch_size must be at least 1"),
    ]:
        with pytest.raises(ConfigError, match=needle) as caught:
            FlipConfig(**fields)
        assert "--" not in str(caught.value) and caught.value.field == next(iter(fields))


def test_cli_neurons_and_bad_input(tmp_path, capsys, cnn_run):
    from test_cli import assert_one_line_error, run_cli

    run = tmp_path / "run"
    shutil.copytree(cnn_run.root, run)
    args = ("locate", "neurons", run, "--n", "3", "--max-units", "40")
    code, out, _ = run_cli(capsys, *args, "--format", "json")
    assert code == 0
    summary = json.loads(out)
    assert {"noisy", "clean", "sharing"} <= set(summary)
    for key in ("flip_rate", "mean_units", "median_units", "layer_share", "mean_collateral_drop"):
        assert key in summary["noisy"]
    lines = (run / "locate/neurons.jsonl").read_text().splitlines()
    assert len(lines) == 6
    rec = json.loads(lines[0])
    assert {"id", "group", "flipped", "units", "n_units", "collateral_drop", "seconds"} <= set(rec)
    assert (run / "locate/neurons.graphml").read_text().startswith("<?xml")
    # resumable: a rerun with the same options adds nothing
    code, _, _ = run_cli(capsys, *args)
    assert code == 0 and len((run / "locate/neurons.jsonl").read_text().splitlines()) == 6
    code, _, err = run_cli(capsys, *args[:3], "--max-units", "0")
    assert_one_line_error(code, err, "--max-units")
    code, _, err = run_cli(capsys, *args[:3], "--examples", "5,300")
    assert_one_line_error(code, err, "0..299", "300")
    (run / "checkpoints/epoch_004.safetensors").unlink()
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, "no final checkpoint")


def test_batched_hold_out_drops_equal_early_exit_drops(cnn_setup):
    from memloc.locate.classifier.unit_search import _drops

    model, adapter, data, _ = cnn_setup
    space = UnitSpace(adapter, "mask", include_head=False)
    with torch.no_grad():
        base = int((model(data.x_hold).argmax(1) == data.y_hold).sum())
    sets = [[], [0, 1, 2], list(range(0, 60, 3)), list(range(32)), [40, 41]]
    for budget in (0.0, 2.0, 5.0, 100.0):
        one_by_one = _drops(model, space, data, sets, base, budget, batched=False)
        together = _drops(model, space, data, sets, base, budget, batched=True)
        assert one_by_one == together
    assert one_by_one[0] == 0.0 and max(one_by_one) > 5.0


def test_suspects_first_changes_no_drop(cnn_setup):
    from memloc.locate.classifier.unit_search import _drop, _Suspects

    model, adapter, data, _ = cnn_setup
    space = UnitSpace(adapter, "mask", include_head=False)
    with torch.no_grad():
        base = int((model(data.x_hold).argmax(1) == data.y_hold).sum())
    sets = [[], [0, 1, 2], list(range(0, 60, 3)), list(range(32)), [40, 41], list(range(30))]
    recorded = 0
    for budget in (0.0, 2.0, 5.0, 100.0):
        plain = [_drop(model, space, data, units, base, budget) for units in sets]
        # one shared record, so each set is scored after the previous rejections' errors
        suspects = _Suspects()
        ordered = [_drop(model, space, data, units, base, budget, suspects) for units in sets]
        assert plain == ordered
        recorded += suspects.counts is not None
    assert recorded > 0  # the suspect-first path was exercised


def test_choice_by_score_ranks_from_either_end_and_breaks_ties_by_id():
    import numpy as np
    from memloc.locate.classifier.example_choice import ScoreChoice, choose_examples, parse_examples

    scores = {"csl": np.array([1.0, 3.0, 3.0, 0.0, 2.0])}
    mask = np.zeros(5, dtype=bool)  # a run whose noise mask is unknown: nothing is marked noisy
    assert parse_examples("top:csl:2") == ScoreChoice("top", "csl", 2)
    assert choose_examples(parse_examples("top:csl:2"), mask, 100, 0, scores.__getitem__) == [1, 2]
    assert choose_examples(parse_examples("bottom:csl"), mask, 3, 0, scores.__getitem__) == [3, 0, 4]
    assert choose_examples(parse_examples("top:csl:9"), mask, 1, 0, scores.__getitem__) == [1, 2, 4, 0, 3]


def test_cli_examples_by_score(tmp_path, capsys, cnn_run):
    from memloc.core.classifier.runs import RunFolder
    from test_cli import assert_one_line_error, run_cli

    run = tmp_path / "run"
    shutil.copytree(cnn_run.root, run)
    # The session's cnn_run may hold results of earlier tests; this copy starts without them.
    shutil.rmtree(run / "locate", ignore_errors=True)
    args = ("locate", "neurons", run, "--max-units", "40")
    for spec, needles in (
        ("top:csl:0", ("--examples 'top:csl:0'", "positive integer")),
        ("top:loss:3", ("unknown score 'loss'", "csl, forgetting, learning_time, curvature")),
        ("middle:csl:3", ("not a choice by score", "top:SCORE[:K]")),
        ("top:curvature:3", ("no curvature scores", "memloc locate scores", "--curvature")),
        ("3,x", ("--examples must be",)),
    ):
        code, _, err = run_cli(capsys, *args, "--examples", spec)
        assert_one_line_error(code, err, *needles)
        assert not (run / "locate").exists()
    code, _, err = run_cli(capsys, *args, "--examples", "top:csl:5", "--format", "json")
    assert code == 0, err
    ids = [json.loads(line)["id"] for line in (run / "locate/neurons.jsonl").read_text().splitlines()]
    loss = RunFolder.open(run).load_dynamics().loss
    csl = loss[1:].astype(float).sum(axis=0)  # cumulative sample loss over the trained epochs
    assert ids == sorted(range(len(csl)), key=lambda i: -csl[i])[:5]


def test_cli_neurons_out_keeps_the_default_results(tmp_path, capsys, cnn_run):
    """A second search written elsewhere with --out must not overwrite the first one's graph and summary."""
    from test_cli import run_cli

    run = tmp_path / "run"
    shutil.copytree(cnn_run.root, run)
    shutil.rmtree(run / "locate", ignore_errors=True)
    code, _, _ = run_cli(capsys, "locate", "neurons", run, "--n", "2", "--max-units", "40")
    assert code == 0
    kept = {name: (run / "locate" / name).read_bytes() for name in ("neurons.graphml", "neurons_report.json")}
    other = run / "other" / "flips.jsonl"
    code, _, _ = run_cli(capsys, "locate", "neurons", run, "--n", "3", "--max-units", "30", "--out", other)
    assert code == 0
    for name, content in kept.items():
        assert (run / "locate" / name).read_bytes() == content, f"{name} was overwritten"
    assert (other.parent / "flips.graphml").read_text().startswith("<?xml")
    stored = json.loads((other.parent / "flips_report.json").read_text())
    assert stored["config"]["n"] == 3 and len(stored["results"]["records"]) == 6
