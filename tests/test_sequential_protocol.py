"""The sequential protocol: batches edited on top of each other, measured as they pile up, never misread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from memloc.core.errors import ConfigError
from memloc.core.lm.facts import Fact
from memloc.edit.delta import LayerDelta, WeightDelta, apply, weights_hash
from memloc.edit.eval_report import save_eval_report
from memloc.edit.evaluate import EvalConfig, EvalResult, evaluate_edits, measure, summarize
from memloc.edit.sequential import SequentialConfig
from test_cli import assert_one_line_error, run_cli
from tiny_lms import tiny_lm

FACTS = [
    Fact(str(i), "the capital of {} is", subject, true, new)
    for i, (subject, true, new) in enumerate(
        [("France", "Paris", "Rome"), ("Italy", "Rome", "Lima"), ("Spain", "Madrid", "Oslo"),
         ("Peru", "Lima", "Cairo"), ("Norway", "Oslo", "Tokyo")]
    )
]  # fmt: skip


def test_checkpoints_follow_the_batches_and_always_include_the_last():
    assert SequentialConfig(batch_size=3, every=2).checkpoints(10) == [6, 10]
    assert SequentialConfig(batch_size=2).checkpoints(5) == [2, 4, 5]
    assert SequentialConfig(batch_size=100, every=1).checkpoints(1000)[-1] == 1000
    with pytest.raises(ConfigError, match="every"):
        SequentialConfig(every=0)


def test_batches_pile_up_and_each_checkpoint_measures_every_fact_so_far():
    lm = tiny_lm("llama")
    base = weights_hash(lm.model)
    seen: list[list[str]] = []

    def editor(facts):
        seen.append([f.case_id for f in facts])
        gen = torch.Generator().manual_seed(len(seen))
        left = torch.randn(lm.adapter.d_model, 1, generator=gen) * 5
        return WeightDelta("random", (LayerDelta(1, left, torch.randn(lm.adapter.d_mlp, 1, generator=gen)),))

    config = EvalConfig(fluency=False)
    protocol = SequentialConfig(batch_size=2, retention_facts=2)
    result = evaluate_edits(lm, FACTS, editor, "sequential", config, sequential=protocol)
    assert seen == [["0", "1"], ["2", "3"], ["4"]]
    assert weights_hash(lm.model) == base
    assert [p.edits for p in result.curve] == [2, 4, 5]
    assert result.curve[-1].es == result.post["ES"] and result.protocol == protocol.describe()
    # Re-apply the first two batches by hand: the middle checkpoint is over facts 0-3 with both in place.
    seen.clear()
    with apply(lm.model, lm.adapter, editor(FACTS[:2])), apply(lm.model, lm.adapter, editor(FACTS[2:4])):
        middle = measure(lm, FACTS[:4], config)
    assert result.curve[1].es == summarize(middle)["ES"]
    assert result.curve[1].retention_es == summarize(middle[:2])["ES"]
    assert EvalResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_the_report_states_the_protocol_and_draws_the_curve(tmp_path):
    lm = tiny_lm("gpt2")

    def unchanged(facts):
        return WeightDelta("none", (), tuple(f.case_id for f in facts), unedited="nothing to change")

    protocol = SequentialConfig(batch_size=2)
    result = evaluate_edits(
        lm, FACTS, unchanged, "sequential", EvalConfig(fluency=False), sequential=protocol
    )
    page = save_eval_report(tmp_path, "tiny", result, EvalConfig(fluency=False), 0, Path("facts.json"))
    text = page.read_text()
    assert "facts edited in batches of 2" in text and "scores as the edits pile up" in text
    stored = json.loads((tmp_path / "eval_report.json").read_text())
    assert stored["config"]["protocol"] == protocol.describe()
    assert (tmp_path / "figures" / "edit_curve_model.png").is_file()


def test_batch_size_outside_sequential_mode_is_one_line(tmp_path, capsys):
    model = Path(__file__).resolve().parents[1] / "fixtures" / "fixture-lm"
    facts = Path(__file__).resolve().parents[1] / "fixtures" / "fixture-facts.json"
    code, _, err = run_cli(
        capsys, "edit", "eval", "--model", model, "--device", "cpu", "--facts", facts, "--method", "rome",
        "--batch-size", "5",
    )  # fmt: skip
    assert_one_line_error(code, err, "--batch-size", "sequential")
