"""Canary templates and the randomness space R they draw from (Carlini et al. 2019, The Secret Sharer).

A template is text with one or more slots, each declaring its own candidates:

- ``{digits:N}``: N decimal digits, 10^N candidates ("my PIN is {digits:6}");
- ``{choice:a|b|c}``: one of the listed words.

Several slots multiply: |R| is the product of the slots' sizes. Candidate i of R is the
mixed-radix reading of i with the first slot most significant, so the space can be
enumerated, indexed and sampled without ever listing it.

Usage::

    space = CanarySpace.parse("my PIN is {digits:6}")
    space.size, space.fill(space.values(123456))   # 1000000, 'my PIN is 123456'
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from memloc.core.errors import DataError

_SLOT = re.compile(r"\{(\w+):([^{}]*)\}")


@dataclass(frozen=True)
class Slot:
    """One random slot: ``digits`` (``width`` digits) or ``choice`` (``options``)."""

    kind: str
    width: int = 0
    options: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return 10**self.width if self.kind == "digits" else len(self.options)

    def value(self, index: int) -> str:
        return str(index).zfill(self.width) if self.kind == "digits" else self.options[index]

    def index(self, value: str) -> int:
        if self.kind == "digits":
            if len(value) != self.width or not value.isdigit():
                raise DataError(f"{value!r} is not {self.width} digits")
            return int(value)
        if value not in self.options:
            raise DataError(f"{value!r} is not one of {'|'.join(self.options)}")
        return self.options.index(value)

    def declaration(self) -> dict:
        return {"kind": self.kind, "size": self.size, "width": self.width, "options": list(self.options)}


def _slot(kind: str, spec: str, template: str) -> Slot:
    if kind == "digits":
        if not spec.isdigit() or not 1 <= int(spec) <= 30:
            raise DataError(f"slot {{digits:{spec}}} in {template!r} needs a width from 1 to 30")
        return Slot("digits", width=int(spec))
    if kind == "choice":
        options = tuple(o.strip() for o in spec.split("|"))
        if len(options) < 2 or not all(options) or len(set(options)) != len(options):
            raise DataError(f"slot {{choice:{spec}}} in {template!r} needs two or more distinct options")
        return Slot("choice", options=options)
    raise DataError(f"unknown slot kind {kind!r} in {template!r}; use {{digits:N}} or {{choice:a|b}}")


@dataclass(frozen=True)
class CanarySpace:
    """A template split into fixed text pieces around its slots: ``pieces[i]`` comes before slot i."""

    template: str
    pieces: tuple[str, ...]
    slots: tuple[Slot, ...]

    @classmethod
    def parse(cls, template: str) -> CanarySpace:
        matches = list(_SLOT.finditer(template))
        if not matches:
            raise DataError(
                f"the canary template {template!r} has no randomness slot; add one such as "
                "{digits:6} or {choice:red|green|blue}"
            )
        pieces, last = [], 0
        for m in matches:
            pieces.append(template[last : m.start()])
            last = m.end()
        pieces.append(template[last:])
        slots = tuple(_slot(m.group(1), m.group(2), template) for m in matches)
        return cls(template, tuple(pieces), slots)

    @property
    def size(self) -> int:
        """|R|: the number of candidates."""
        size = 1
        for slot in self.slots:
            size *= slot.size
        return size

    def values(self, index: int) -> tuple[str, ...]:
        """The slot values of candidate ``index`` (first slot most significant)."""
        if not 0 <= index < self.size:
            raise DataError(f"candidate {index} is outside the space of {self.size}")
        out = []
        for slot in reversed(self.slots):
            index, digit = divmod(index, slot.size)
            out.append(slot.value(digit))
        return tuple(reversed(out))

    def index(self, values: tuple[str, ...]) -> int:
        if len(values) != len(self.slots):
            raise DataError(f"{values} fills {len(values)} slots; the template has {len(self.slots)}")
        index = 0
        for slot, value in zip(self.slots, values, strict=True):
            index = index * slot.size + slot.index(value)
        return index

    def fill(self, values: tuple[str, ...]) -> str:
        """The template's text with ``values`` in its slots."""
        parts = [self.pieces[0]]
        for value, piece in zip(values, self.pieces[1:], strict=True):
            parts += [value, piece]
        return "".join(parts)

    def draw(self, rng: random.Random) -> tuple[str, ...]:
        return self.values(rng.randrange(self.size))

    @property
    def fixed_prefix(self) -> str:
        """The text before the first slot, cut at its last space so the slot's token keeps its space."""
        head = self.pieces[0]
        cut = head.rfind(" ")
        return head[:cut] if cut > 0 else ""

    def declaration(self) -> dict:
        return {"template": self.template, "size": self.size, "slots": [s.declaration() for s in self.slots]}
