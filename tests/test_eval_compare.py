"""`memloc report` on a folder of edit evaluations: the methods side by side, curves in one figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from memloc.core.errors import MemlocError
from memloc.edit.eval_compare import EditEvalFolder, load_eval_result
from test_cli import assert_one_line_error, run_cli

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures"
COMMON = ("--model", FIXTURE / "fixture-lm", "--device", "cpu", "--facts", FIXTURE / "fixture-facts.json")


@pytest.fixture
def evaluated(tmp_path, monkeypatch, capsys):
    """Sequential ROME (batches of 1) and AlphaEdit (batches of 2) runs on the fixture LM, each in its folder."""
    monkeypatch.setenv("MEMLOC_CACHE", str(tmp_path / "cache"))
    runs = tmp_path / "runs"
    for method, batch in (("rome", "1"), ("alphaedit", "2")):
        code, _, err = run_cli(
            capsys, "edit", "eval", *COMMON, "--method", method, "--mode", "sequential", "--batch-size", batch,
            "--limit", "4", "--layers", "0", "--samples", "8", "--fluency-tokens", "8",
            "--out", runs / method, "--format", "json",
        )  # fmt: skip
        assert code in (0, None), err
    return runs


def test_the_page_compares_every_run_and_draws_their_curves_in_one_figure(evaluated, capsys):
    found = EditEvalFolder.find(evaluated)
    assert found is not None
    by_label = dict(found.results)
    assert set(by_label) == {"rome", "alphaedit"}
    assert by_label["rome"].batch_size == 1 and by_label["alphaedit"].batch_size == 2
    assert [p.edits for p in by_label["rome"].curve] == [1, 2, 3, 4]
    assert [p.edits for p in by_label["alphaedit"].curve] == [2, 4]

    code, printed, _ = run_cli(capsys, "report", evaluated, "--format", "json")
    assert code in (0, None)
    md = Path(json.loads(printed)["markdown"]).read_text()
    figures = evaluated / "report" / "figures"
    assert (figures / "edit_curves_compared.png").is_file()
    # Each run keeps its own figures: two sequential runs of different methods do not overwrite.
    assert (figures / "edit_curve_rome_rome.png").is_file()
    assert (figures / "edit_curve_alphaedit_alphaedit.png").is_file()
    # The table holds each run's stored post-edit scores.
    header, rows = _table(md, "| run |")
    for label, result in by_label.items():
        row = dict(zip(header, rows[label], strict=True))
        assert float(row["ES"]) == pytest.approx(result.post["ES"], abs=1e-3)
        assert float(row["NS"]) == pytest.approx(result.post["NS"], abs=1e-3)
    assert "facts edited in batches of 1" in md and "facts edited in batches of 2" in md


def _table(md: str, starts: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = md.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(starts))
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[at:]]
    body = [row for row in cells[2:] if len(row) == len(cells[0])]
    end = next((i for i, line in enumerate(lines[at:]) if not line.startswith("|")), len(lines) - at)
    return cells[0], {row[0]: row for row in body[: end - 2]}


def test_a_file_that_is_not_an_edit_evaluation_is_named_in_one_line(tmp_path, capsys):
    stray = tmp_path / "runs" / "x" / "eval_report.json"
    stray.parent.mkdir(parents=True)
    stray.write_text(json.dumps({"method": "other", "model_id": "m", "config": {}, "results": {},
                                 "metrics": {}, "provenance": {}, "schema_version": 1}))  # fmt: skip
    with pytest.raises(MemlocError, match="not an edit evaluation"):
        load_eval_result(stray)
    code, _, err = run_cli(capsys, "report", tmp_path / "runs")
    assert_one_line_error(code, err, "eval_report.json", "not an edit evaluation")


def test_a_folder_without_evaluations_is_not_an_edit_page(tmp_path):
    assert EditEvalFolder.find(tmp_path) is None
    assert EditEvalFolder.find(tmp_path / "missing") is None
