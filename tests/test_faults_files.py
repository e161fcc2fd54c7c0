"""Damaged files, torn logs, leftovers and permissions (#12): one line naming the file, or a clean recovery."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
from memloc.core.errors import MemlocError, MemlocWarning
from test_cli import assert_one_line_error, run_cli

# --- torn append-only logs ------------------------------------------------------------


def test_torn_last_line_is_dropped_with_a_warning_and_cut_off(tmp_path):
    from memloc.core.jsonl import read_log

    path = tmp_path / "log.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}\n{"id": 3, "uni')
    with pytest.warns(MemlocWarning, match="log.jsonl"):
        records = read_log(path, repair=True)
    assert records == [{"id": 1}, {"id": 2}]
    assert path.read_text() == '{"id": 1}\n{"id": 2}\n'  # the next append starts a fresh line


def test_complete_last_line_without_newline_is_kept_and_terminated(tmp_path):
    from memloc.core.jsonl import read_log

    path = tmp_path / "log.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_log(path, repair=True) == [{"id": 1}, {"id": 2}]
    assert path.read_text() == '{"id": 1}\n{"id": 2}\n'


def test_corrupt_inner_line_is_an_error_naming_file_and_line(tmp_path):
    from memloc.core.jsonl import read_log

    path = tmp_path / "log.jsonl"
    path.write_text('{"id": 1}\n{"id": \x00\x17\n{"id": 3}\n')
    with pytest.raises(MemlocError, match=r"log\.jsonl:2 ") as caught:
        read_log(path, repair=True)
    assert "\n" not in str(caught.value)
    assert path.read_text() == '{"id": 1}\n{"id": \x00\x17\n{"id": 3}\n'  # an error changes nothing


def test_torn_neurons_jsonl_rerun_redoes_the_torn_record(tmp_path, capsys, cnn_run):
    run = tmp_path / "run"
    shutil.copytree(cnn_run.root, run)
    args = ("locate", "neurons", run, "--n", "2", "--max-units", "40", "--format", "json")
    code, _, _ = run_cli(capsys, *args)
    assert code == 0
    path = run / "locate/neurons.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == 4
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2])
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "memloc: warning:" in err and "neurons.jsonl" in err and "Traceback" not in err
    again = path.read_text().splitlines()
    assert again[:3] == lines[:3] and len(again) == 4
    assert json.loads(again[3])["id"] == json.loads(lines[3])["id"]
    path.write_text("\n".join([lines[0], "garbage{", *lines[1:]]) + "\n")
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, "neurons.jsonl:2")


def test_damaged_stats_cache_and_generated_corpus_are_recomputed_with_a_warning(tmp_path):
    import torch
    from memloc.edit.stats import StatsConfig, key_statistics
    from tiny_lms import tiny_lm

    lm = tiny_lm("gpt2")
    config = StatsConfig(samples=6, generated_length=8, batch_size=4)
    first = key_statistics(lm, 1, config, cache_dir=tmp_path)
    (layer_file,) = tmp_path.rglob("layer_1.safetensors")
    (generated,) = tmp_path.rglob("generated-*.jsonl")
    layer_file.write_bytes(layer_file.read_bytes()[:100])
    generated.write_bytes(b'{"text": "ok"}\n\xff\xfe garbage\n{"text"')
    with pytest.warns(MemlocWarning) as seen:
        again = key_statistics(lm, 1, config, cache_dir=tmp_path)
    said = " ".join(str(w.message) for w in seen)
    assert "layer_1.safetensors" in said and "generated-" in said
    assert torch.equal(again.second_moment, first.second_moment)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten cache is whole again
        key_statistics(lm, 1, config, cache_dir=tmp_path)
