"""Models spread over devices with accelerate: ``--device-map auto|balanced|JSON``.

A device map places each module of a model on a GPU, the CPU or the disk
(transformers' ``from_pretrained(device_map=...)``, which dispatches it with
accelerate's ``dispatch_model``). accelerate then wraps each placed module's
``forward`` with an ``AlignDevicesHook`` that moves its inputs to its device and,
for offloaded modules, loads the weights just for that call: their parameters
stay on the "meta" device between calls.

memloc's own hooks (core/hooks.py) are ordinary torch forward hooks around
accelerate's wrapper: an input hook sees the activation still on the previous
module's device, an output hook sees it on this module's, so whatever a patch mixes
in is moved to the activation's device. What a weight edit cannot work with is an
offloaded layer (with a GPU main device, a "cpu" entry is offloaded too): its weight
has no storage to write to, and the hook would overwrite a write with the saved copy
on the next call. `require_resident` refuses those layers with one line.

Example::

    spec = parse_device_map('{"model.embed_tokens": 0, "model.layers": 0, "lm_head": 1}')
    device_map = check_device_map(spec, skeleton)  # names and devices checked
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from memloc.core.errors import DataError, MemlocError
from torch import nn

# The strategies transformers and accelerate compute a map for.
STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
DeviceMap = str | dict[str, str | int]


def require_accelerate() -> None:
    """A missing accelerate is one line naming the extra that brings it."""
    if importlib.util.find_spec("accelerate") is None:
        raise MemlocError("--device-map needs accelerate: pip install 'memloc[lm]'", field="device_map")


def parse_device_map(spec: str) -> DeviceMap:
    """A strategy name, or the mapping of an inline JSON object or of a .json file.

    Example::

        parse_device_map("balanced")  # -> "balanced"
        parse_device_map('{"": "cpu"}')  # -> {"": "cpu"}
        parse_device_map("maps/llama-2gpu.json")  # the file's object
    """
    text = spec.strip()
    if text.lower() in STRATEGIES:
        return text.lower()
    if text.startswith("{"):
        where = "the inline device map"
    else:
        path = Path(text).expanduser()
        if path.suffix.lower() != ".json" or not path.is_file():
            raise DataError(
                f"device map {spec!r} is neither {', '.join(STRATEGIES)}, an inline JSON object "
                "nor an existing .json file",
                field="device_map",
            )
        where, text = f"device map file {path}", path.read_text(encoding="utf-8")
    try:
        found = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{where} is not valid JSON: {exc.msg} at line {exc.lineno}", field="device_map"
        ) from None
    if not isinstance(found, dict) or not found:
        raise DataError(
            f"{where} must be a non-empty JSON object of module name -> device", field="device_map"
        )
    return {str(name): _device(name, value) for name, value in found.items()}


def _device(name: str, value: object) -> str | int:
    """One map entry's device, normalised to what accelerate takes: an int, "cpu" or "disk"."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise DataError(
            f"device map entry {name!r}: device {value!r} is not a GPU index or a name", field="device_map"
        )
    text = str(value).strip().lower()
    if text in ("cpu", "disk"):
        return text
    match = re.fullmatch(r"(?:cuda(?::(\d+))?)|(\d+)", text)
    if match is None:
        raise DataError(
            f"device map entry {name!r}: unknown device {value!r}; use a GPU index, cuda:N, cpu or disk",
            field="device_map",
        )
    index = int(match.group(1) or match.group(2) or 0)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        raise DataError(
            f"device map entry {name!r}: GPU {index} does not exist; this machine has {count} GPU(s)",
            field="device_map",
        )
    return index


def check_device_map(device_map: DeviceMap, skeleton: nn.Module) -> DeviceMap:
    """``device_map`` checked against the model's module names (``skeleton``: the model, weights or not).

    Every name must be a module of the model, and every parameter must fall under one
    entry (its own module or a parent), or loading would stop deep inside transformers.
    """
    if isinstance(device_map, str):
        return device_map
    modules = {name for name, _ in skeleton.named_modules()}
    unknown = sorted(name for name in device_map if name not in modules)
    if unknown:
        example = next((n for n, _ in skeleton.named_children()), "")
        raise DataError(
            f"device map names {len(unknown)} module(s) the model does not have, first {unknown[0]!r}; "
            f"use module names such as {example!r}",
            field="device_map",
        )
    uncovered = [n for n, _ in skeleton.named_parameters() if _entry(n, device_map) is None]
    if uncovered:
        raise DataError(
            f"device map gives no device for {len(uncovered)} parameter(s), first {uncovered[0]!r}; "
            'add an entry for it or one of its parents ("" covers the whole model)',
            field="device_map",
        )
    return dict(device_map)


def _entry(parameter: str, device_map: Mapping[str, object]) -> str | None:
    """The map entry a parameter falls under: the longest module name that prefixes it."""
    parts = parameter.split(".")
    for cut in range(len(parts), -1, -1):
        name = ".".join(parts[:cut])
        if name in device_map:
            return name
    return None


# --- modules of a dispatched model -----------------------------------------------------


def _hooks(module: nn.Module) -> Iterable[object]:
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return ()
    return getattr(hook, "hooks", None) or (hook,)  # a SequentialHook holds several


def is_offloaded(module: nn.Module) -> bool:
    """True when accelerate keeps this module's weights off any device between calls (cpu/disk offload)."""
    if any(getattr(hook, "offload", False) for hook in _hooks(module)):
        return True
    return any(p.device.type == "meta" for p in module.parameters(recurse=False))


def module_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: accelerate's execution device when it is dispatched, else its weights'."""
    for hook in _hooks(module):
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return torch.device(device if not isinstance(device, int) else f"cuda:{device}")
    for tensor in (*module.parameters(recurse=False), *module.parameters()):
        return tensor.device
    return torch.device("cpu")


def require_resident(modules: Iterable[tuple[str, str, nn.Module]], what: str) -> None:
    """Refuse to edit a module whose weights accelerate offloads.

    ``modules`` are (label, map entry to suggest, module), e.g.
    ("layer 3", "model.layers.3", down_proj).
    """
    for label, entry, module in modules:
        if is_offloaded(module):
            raise MemlocError(
                f"{what} would write to {label} ({entry}), whose weights the device map offloads "
                "(cpu/disk offload), where a write does not persist; give a --device-map that keeps "
                f'it on a device, e.g. {{"{entry}": 0}} or "cpu" without a GPU'
            )


class OnloadedState(Mapping[str, torch.Tensor]):
    """A model's state dict in which offloaded tensors are read from accelerate's store on access.

    An offloaded parameter is a "meta" placeholder; its values sit in the ``weights_map``
    of the nearest enclosing module's offload hook. Reading them one at a time keeps
    memory to one tensor, so a model larger than memory can still be hashed.

    Example::

        state_hash(OnloadedState(model))  # equals state_hash(model.state_dict()) undispatched
    """

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._state = model.state_dict(keep_vars=True)

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor = self._state[name]
        if tensor.device.type != "meta":
            return tensor
        parts = name.split(".")
        for cut in range(len(parts) - 1, -1, -1):
            owner = self._model.get_submodule(".".join(parts[:cut]))
            for hook in _hooks(owner):
                store = getattr(hook, "weights_map", None)
                rest = ".".join(parts[cut:])
                if store is not None and rest in store:
                    return store[rest]
        raise MemlocError(f"the offloaded tensor {name} is in no accelerate weights store; reload the model")

    def __iter__(self):
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)


def has_offloaded(model: nn.Module) -> bool:
    """True when some parameter or buffer of ``model`` is an offloaded placeholder."""
    return any(t.device.type == "meta" for t in (*model.parameters(), *model.buffers()))
