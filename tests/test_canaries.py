"""Canary templates, their randomness space, and planting them in a copy of a corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from memloc.core.errors import DataError
from memloc.core.lm.canaries import CanaryConfig, make_canaries, plant, read_canaries
from memloc.core.lm.canary_space import CanarySpace
from memloc.core.lm.corpus_files import read_corpus
from test_cli import assert_one_line_error, run_cli


def test_space_declares_its_size_and_round_trips_indices():
    space = CanarySpace.parse("PIN {digits:3}, colour {choice:red|green}")
    assert space.size == 2000
    assert space.values(0) == ("000", "red") and space.values(1999) == ("999", "green")
    assert space.fill(space.values(1201)) == "PIN 600, colour green"
    assert all(space.index(space.values(i)) == i for i in (0, 7, 999, 1000, 1999))
    assert [s["size"] for s in space.declaration()["slots"]] == [1000, 2]
    assert space.fixed_prefix == "PIN"


@pytest.mark.parametrize(
    ("template", "needle"),
    [
        ("my PIN is 123456", "no randomness slot"),
        ("{digits:0}", "width from 1"),
        ("{choice:a}", "two or more distinct"),
        ("{colour:red}", "unknown slot kind"),
    ],
)
def test_bad_templates_are_refused(template, needle):
    with pytest.raises(DataError, match=needle):
        CanarySpace.parse(template)


def test_plant_inserts_each_canary_its_repeat_count_at_recorded_positions():
    documents = [f"document {i}" for i in range(50)]
    out, canaries = plant(documents, CanaryConfig(repeats=(1, 5, 20), per_repeat=2, seed=3))
    assert len(out) == 50 + 2 * (1 + 5 + 20)
    assert [c.repeats for c in canaries] == [1, 1, 5, 5, 20, 20]
    assert len({c.secret for c in canaries}) == 6
    for c in canaries:
        assert len(c.positions) == c.repeats and all(out[p] == c.text for p in c.positions)
    assert [d for d in out if d.startswith("document")] == documents  # order kept
    again, _ = plant(documents, CanaryConfig(repeats=(1, 5, 20), per_repeat=2, seed=3))
    other, _ = plant(documents, CanaryConfig(repeats=(1, 5, 20), per_repeat=2, seed=4))
    assert again == out and other != out


def _corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"paragraph {i} line one\nline two\n\n" for i in range(10)))
    return path


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_make_writes_a_copy_and_a_canaries_file(tmp_path, suffix):
    corpus = _corpus(tmp_path)
    before = corpus.read_bytes()
    canaries = make_canaries(corpus, tmp_path / f"new{suffix}", CanaryConfig(repeats=(2, 3)))
    assert corpus.read_bytes() == before
    copied = read_corpus(tmp_path / f"new{suffix}")
    assert len(copied) == 15 and sum(d.startswith("my PIN is ") for d in copied) == 5
    assert read_canaries(tmp_path / "new.canaries.jsonl") == canaries
    record = json.loads((tmp_path / "new.canaries.jsonl").read_text().splitlines()[0])
    assert record["space"]["size"] == 10**6 and record["template"] == "my PIN is {digits:6}"


def test_cli_make_and_its_refusals(tmp_path, capsys):
    corpus = _corpus(tmp_path)
    out = tmp_path / "planted.jsonl"
    make = ("canaries", "make", "--corpus", corpus, "--out", out)
    code, _, err = run_cli(capsys, *make, "--template", "the {choice:red|blue} car", "--repeats", "1,4")
    assert code in (0, None) and (tmp_path / "planted.canaries.jsonl").is_file()
    written = out.read_bytes()
    code, _, err = run_cli(capsys, *make)
    assert_one_line_error(code, err, "exists")
    assert out.read_bytes() == written
    other = tmp_path / "other.jsonl"
    code, _, err = run_cli(
        capsys, "canaries", "make", "--corpus", corpus, "--out", other, "--template", "no slot"
    )
    assert_one_line_error(code, err, "no randomness slot")
    assert not other.exists() and not (tmp_path / "other.canaries.jsonl").exists()
    code, _, err = run_cli(capsys, "canaries", "make", "--corpus", corpus, "--out", other, "--repeats", "1,x")
    assert_one_line_error(code, err, "--repeats")


def test_a_tampered_canaries_file_is_refused(tmp_path):
    make_canaries(_corpus(tmp_path), tmp_path / "p.jsonl", CanaryConfig(repeats=(1,)))
    path = tmp_path / "p.canaries.jsonl"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "secret": ["12"]}) + "\n")
    with pytest.raises(DataError, match="is not 6 digits"):
        read_canaries(path)
    path.write_text("{not json\n")
    with pytest.raises(DataError, match="not JSON"):
        read_canaries(path)
