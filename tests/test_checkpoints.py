import os
from pathlib import Path

import pytest
import torch
from memloc.core.checkpoints import (
    atomic_write,
    load_into,
    load_tensors,
    save_tensors,
    state_hash,
)
from memloc.core.errors import CheckpointError, MemlocError, UnsafePickleError
from torch import nn


class RunsCode:
    """Unpickling this writes a file: the attack weights_only=True must stop."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_safetensors_round_trip_and_hash(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5), "s": torch.tensor(7)}
    path = save_tensors(tmp_path / "x.safetensors", tensors)
    back = load_tensors(path)
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)
    assert state_hash(back) == state_hash(dict(reversed(list(tensors.items()))))
    tensors["a"][0, 0] += 1
    assert state_hash(back) != state_hash(tensors)
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "x.safetensors"
    save_tensors(path, {"a": torch.ones(2)})

    def crash(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, crash)
    assert torch.equal(load_tensors(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]


def test_never_writes_over_an_input(tmp_path):
    path = save_tensors(tmp_path / "in.safetensors", {"a": torch.ones(1)})
    before = path.read_bytes()
    with pytest.raises(MemlocError, match="input file"):
        save_tensors(tmp_path / "." / "in.safetensors", {"a": torch.zeros(1)}, inputs=[path])
    assert path.read_bytes() == before


def test_plain_pt_loads_with_weights_only(tmp_path):
    model = nn.Linear(2, 3)
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "m.pt")
    back = load_tensors(tmp_path / "m.pt")
    assert torch.equal(back["weight"], model.weight)


def test_code_running_pickle_is_refused_unless_trusted(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"weight": torch.ones(1), "payload": RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafePickleError, match="pass trust_pickle"):
        load_tensors(tmp_path / "evil.pt")
    assert not marker.exists()
    back = load_tensors(tmp_path / "evil.pt", trust_pickle=True)
    assert marker.read_text() == "pwned" and torch.equal(back["weight"], torch.ones(1))


def test_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tensors(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_tensors(tmp_path / "junk.safetensors")
    (tmp_path / "w.npy").write_bytes(b"")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_tensors(tmp_path / "w.npy")
    with pytest.raises(CheckpointError, match="not a file"):
        load_tensors(tmp_path)


def test_mismatched_tensors_are_named():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state = model.state_dict()
    wrong = {**state, "0.weight": torch.zeros(4, 2), "extra": torch.zeros(1)}
    del wrong["1.bias"]
    with pytest.raises(CheckpointError) as err:
        load_into(model, wrong, source="ck")
    message = str(err.value)
    assert "missing 1.bias" in message and "unexpected extra" in message and "0.weight is (4, 2)" in message
    assert "\n" not in message
    load_into(model, state)


def test_unreadable_file(tmp_path, monkeypatch):
    path = save_tensors(tmp_path / "x.safetensors", {"a": torch.ones(1)})
    path.chmod(0)
    # root reads any file, so ask the permission check directly as an unprivileged user would
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(path) else real_access(p, mode))
    with pytest.raises(CheckpointError, match="not readable"):
        load_tensors(path)
