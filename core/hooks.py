"""Read and write activations at Sites: the `trace` and `patch` context managers.

In the spirit of baukit's TraceDict: hooks are registered on enter and always
removed in ``finally``, so an exception in the body never leaves a hook behind.
This is the only file that registers forward hooks. `capture_calls` records a
block's whole call (arguments, masks, cache) so that it can be run again by hand.
``trace(..., stop=True)`` ends the forward pass once every site has been read, like
baukit's ``stop=True``, so that no caller needs its own exception for that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from memloc.core.adapters import HookPoint, resolve_module
from memloc.core.sites import Site
from torch import nn

Transform = Callable[[torch.Tensor], torch.Tensor]


class _StopForwardError(Exception):
    """Raised by a hook of ``trace(..., stop=True)`` once every site is read; swallowed there."""


class SiteAdapter(Protocol):
    def hook_point(self, site: Site) -> HookPoint: ...


def _first(value: Any) -> torch.Tensor:
    # HF blocks return tuples whose first element is the hidden state.
    return value[0] if isinstance(value, tuple) else value


def _replace_first(value: Any, new: torch.Tensor) -> Any:
    return (new, *value[1:]) if isinstance(value, tuple) else new


def _register(module: nn.Module, point: HookPoint, fn: Transform | None, store: Callable) -> Any:
    """Register one hook that stores the activation and optionally rewrites it."""
    if point.io == "output":

        def on_output(_mod: nn.Module, _args: Any, output: Any) -> Any:
            act = _first(output)
            if fn is not None:
                act = fn(act)
                output = _replace_first(output, act)
            store(act)
            return output

        return module.register_forward_hook(on_output)

    def on_input(_mod: nn.Module, args: tuple, kwargs: dict) -> Any:
        # Transformer blocks may receive the hidden state by keyword.
        keyword = not args and "hidden_states" in kwargs
        act = kwargs["hidden_states"] if keyword else args[0]
        if fn is not None:
            act = fn(act)
            if keyword:
                kwargs = {**kwargs, "hidden_states": act}
            else:
                args = (act, *args[1:])
        store(act)
        return args, kwargs

    return module.register_forward_pre_hook(on_input, with_kwargs=True)


@contextmanager
def _hooked(
    model: nn.Module,
    adapter: SiteAdapter,
    fns: Mapping[Site, Transform | None],
    detach: bool,
    stop: bool = False,
) -> Iterator[dict[Site, torch.Tensor]]:
    seen: dict[Site, torch.Tensor] = {}
    pending = set(fns)
    handles = []
    try:
        for site, fn in fns.items():
            point = adapter.hook_point(site)

            def store(act: torch.Tensor, site: Site = site) -> None:
                seen[site] = act.detach() if detach else act
                pending.discard(site)
                if stop and not pending:
                    raise _StopForwardError

            handles.append(_register(resolve_module(model, point.module), point, fn, store))
        yield seen
    except _StopForwardError:
        pass  # the forward pass was ended on purpose, once every site was read
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def trace(
    model: nn.Module,
    adapter: SiteAdapter,
    sites: Iterable[Site],
    *,
    detach: bool = True,
    stop: bool = False,
) -> Iterator[dict[Site, torch.Tensor]]:
    """Record the activation at each site during forward passes in the body.

    Yields a dict filled by each forward pass (the last pass wins). With
    ``detach=False`` the recorded tensors stay in the autograd graph. With ``stop=True``
    the forward pass ends as soon as every site has been read, so nothing after the
    last one runs (later blocks, the unembedding); that also ends the body, so the
    model call should be its last statement::

        with trace(model, adapter, [Site(3, "mlp.post")], stop=True) as seen:
            model(input_ids=ids)
        keys = seen[Site(3, "mlp.post")]
    """
    with _hooked(model, adapter, dict.fromkeys(sites), detach, stop) as seen:
        yield seen


@contextmanager
def patch(
    model: nn.Module,
    adapter: SiteAdapter,
    fns: Mapping[Site, Transform],
    *,
    detach: bool = True,
) -> Iterator[dict[Site, torch.Tensor]]:
    """Replace the activation at each site by ``fn(activation)`` during the body.

    Also yields the patched activations, like `trace`.
    """
    with _hooked(model, adapter, dict(fns), detach) as seen:
        yield seen


@contextmanager
def capture_calls(
    model: nn.Module, adapter: SiteAdapter, sites: Iterable[Site]
) -> Iterator[dict[Site, tuple[tuple, dict]]]:
    """Record the positional and keyword arguments the module at each input site receives.

    Only input sites (e.g. ``resid.pre``, a block's input) qualify. With these a caller
    can run one block again by hand on other hidden states, with the masks, positions
    and cache that the model itself passed (the last pass wins). Nothing is changed.
    """
    calls: dict[Site, tuple[tuple, dict]] = {}
    handles = []
    try:
        for site in sites:
            point = adapter.hook_point(site)
            if point.io != "input":
                raise ValueError(f"capture_calls needs an input site, got {site}")

            def record(_mod: nn.Module, args: tuple, kwargs: dict, site: Site = site) -> None:
                calls[site] = (args, dict(kwargs))

            module = resolve_module(model, point.module)
            handles.append(module.register_forward_pre_hook(record, with_kwargs=True))
        yield calls
    finally:
        for handle in handles:
            handle.remove()
