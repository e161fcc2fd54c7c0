"""Defaults of the method configs, read from their source without importing it.

Typer needs every option's default when a command is declared, but the config
dataclasses live beside their methods, whose modules import torch and transformers
(seconds). So the CLI reads a field's default from the config's source with `ast`:
``--help`` and argument errors stay fast, and the value still has one home, the
config class. Only literal defaults can be read this way; anything else is an error
the CLI tests catch (they compare every value read here with the imported class).
"""

from __future__ import annotations

import ast
import importlib.util
from functools import cache
from typing import Any

READ: set[tuple[str, str]] = set()  # (module:Class, field) read so far, for the tests


@cache
def _module_tree(module: str) -> ast.Module:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise LookupError(f"no module {module}")
    with open(spec.origin, encoding="utf-8") as source:
        return ast.parse(source.read())


def _constant(module: str, name: str) -> Any:
    """A module-level literal ``NAME = ...``, or one the module imports by name."""
    for node in _module_tree(module).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return _literal(module, node.value)
        if isinstance(node, ast.ImportFrom) and node.module and any(a.name == name for a in node.names):
            return _constant(node.module, name)
    raise LookupError(f"{module} defines no constant {name}")


def _literal(module: str, node: ast.expr) -> Any:
    if isinstance(node, ast.Name):
        return _constant(module, node.id)
    return ast.literal_eval(node)


def config_default(config: str, field: str) -> Any:
    """The default of ``field`` in the dataclass ``config`` (``"package.module:Class"``).

    Example::

        samples = config_default("memloc.locate.lm.tracing:TraceConfig", "samples")
    """
    module, _, name = config.partition(":")
    READ.add((config, field))
    for node in _module_tree(module).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            for item in node.body:
                if (
                    isinstance(item, ast.AnnAssign)
                    and isinstance(item.target, ast.Name)
                    and item.target.id == field
                ):
                    if item.value is None:
                        break
                    return _literal(module, item.value)
            raise LookupError(f"{config} has no default for {field}")
    raise LookupError(f"{module} has no class {name}")
