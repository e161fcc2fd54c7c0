"""Safe checkpoint I/O.

- safetensors is the native format; every write is atomic (temporary file in the
  same folder, then ``os.replace``), so a crash never leaves a half-written file
  under the final name.
- ``.pt``/``.pth``/``.bin`` files load with ``torch.load(weights_only=True)``. A
  pickle that needs code execution is refused unless the caller trusts it.
- Writes never go over a file the caller read from (``inputs``).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from memloc.core.errors import CheckpointError, MemlocError, UnsafePickleError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


TEMP_MARK = ".memloc-tmp-"  # temporaries are named .<final name>.memloc-tmp-<pid>-<random>


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask must set it to read it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_mode(path: str | Path) -> None:
    """Give a temporary (mkstemp 0600, mkdtemp 0700) the mode a plain open or mkdir would have had."""
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


def publish_tree(folder: str | Path) -> None:
    """`publish_mode` for a folder and everything in it (some writers, e.g. transformers', use mkstemp too)."""
    folder = Path(folder)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            publish_mode(path)
    publish_mode(folder)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(parent: Path, name: str) -> None:
    """Remove temporaries for ``name`` in ``parent`` that a process no longer alive left behind."""
    if not parent.is_dir():
        return
    for leftover in parent.glob(f".{name}{TEMP_MARK}*"):
        pid = leftover.name[len(f".{name}{TEMP_MARK}") :].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def temp_folder(parent: Path, name: str) -> Path:
    """A new hidden folder beside ``parent/name`` to build it in; stale ones of dead runs are removed first.

    tmp = temp_folder(out.parent, out.name); ...; publish_mode(tmp); os.replace(tmp, out)
    """
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(parent, name)
    return Path(tempfile.mkdtemp(prefix=f".{name}{TEMP_MARK}{os.getpid()}-", dir=parent))


def atomic_write(path: str | Path, write: Callable[[Path], object], *, inputs: Iterable = ()) -> Path:
    """Call ``write(tmp)`` and move the temporary file onto ``path`` atomically."""
    path = Path(path)
    guard_not_input(path, inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}{TEMP_MARK}{os.getpid()}-", suffix=".tmp", dir=path.parent
    )
    os.close(fd)
    try:
        write(Path(tmp))
        publish_mode(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | Path, text: str, *, inputs: Iterable = ()) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text), inputs=inputs)


def guard_not_input(path: str | Path, inputs: Iterable) -> None:
    """Refuse to write over a file that was given as an input."""
    target = Path(path).resolve()
    for source in inputs:
        if Path(source).resolve() == target:
            raise MemlocError(f"refusing to write over the input file {source}; choose another output")


def save_tensors(
    path: str | Path,
    tensors: Mapping[str, torch.Tensor],
    *,
    inputs: Iterable = (),
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Save tensors as safetensors, atomically (contiguous CPU copies; shared storage is split)."""
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return atomic_write(
        path, lambda tmp: save_file(flat, str(tmp), metadata=dict(metadata or {})), inputs=inputs
    )


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"checkpoint {path} is not readable (check its permissions)")


def _state_from_object(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict in what a .pt file held: a dict, a wrapped dict, or a module."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, (Mapping, nn.Module)):
                return _state_from_object(inner, path)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(f"{path} holds no tensors memloc can use (found {type(obj).__name__})")


def load_tensors(path: str | Path, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a torch pickle, on the CPU."""
    path = Path(path)
    _check_readable(path)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a valid safetensors file: {exc}") from exc
    if path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"unknown checkpoint format {path.suffix!r} for {path}; "
            f"use .safetensors or one of {', '.join(PICKLE_SUFFIXES)}"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc):  # weights_only names the global a code-running pickle needs
            raise CheckpointError(
                f"{path} is not a valid torch checkpoint (damaged or another format)"
            ) from None
        if not trust_pickle:
            raise UnsafePickleError(
                f"{path} is a pickle that runs code when loaded; memloc refused it. "
                "Convert it to safetensors, or pass trust_pickle if you trust its source",
                field="trust_pickle",
            ) from exc
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as inner:
            raise CheckpointError(f"cannot load {path}: {inner}") from inner
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path} is not a valid torch checkpoint: {str(exc).splitlines()[0]}") from None
    except (KeyError, ValueError, TypeError, AttributeError, IndexError):
        # Bytes that happen to start like a pickle fail inside the unpickler in many ways.
        raise CheckpointError(f"{path} is not a valid torch checkpoint (damaged or another format)") from None
    return _state_from_object(obj, path)


def load_into(model: nn.Module, tensors: Mapping[str, torch.Tensor], *, source: str = "checkpoint") -> None:
    """Copy tensors into the model in place, refusing any mismatch of names or shapes."""
    check_names_and_shapes(model, tensors, source=source)
    model.load_state_dict(dict(tensors), strict=True)


def check_names_and_shapes(
    model: nn.Module, tensors: Mapping[str, torch.Tensor], *, source: str = "checkpoint"
) -> None:
    """Refuse, naming a few keys, tensors whose names or shapes differ from the model's (meta tensors do)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in expected if k in tensors and tensors[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        if wrong:
            k = wrong[0]
            parts.append(
                f"shape of {k} is {tuple(tensors[k].shape)}, model has {tuple(expected[k].shape)}"
                + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else "")
            )
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(parts))


def _few(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" (and {len(keys) - n} more)" if len(keys) > n else "")


def state_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """A SHA-256 over names, dtypes, shapes and bytes, independent of dict order."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
