"""Architecture-independent addresses of places in a network.

A `Site` names a layer and a kind, e.g. ``Site(5, "mlp.post")``, written
``blocks.5.mlp.post``. Adapters (core/adapters.py) map sites to modules.

Shapes at each kind (B = batch, T = tokens, D = model width, F = FFN width,
C = channels or features of a classifier block):

- ``resid.pre``  (B, T, D)  residual stream entering block i
- ``attn.out``   (B, T, D)  attention output added to the residual stream
- ``mlp.post``   (B, T, F)  neuron activations: the input of the FFN down-projection
  (for gated MLPs ``act(gate) * up``)
- ``mlp.out``    (B, T, D)  FFN output added to the residual stream
- ``resid.post`` (B, T, D)  residual stream leaving block i
- ``out``        (B, C, ...) output of classifier block i; a unit is one channel
  (conv) or feature (linear)
- ``pre``        (B, C, ...) output of block i's conv or linear layer itself, before
  normalization and activation: masking unit c here equals zeroing that unit's
  weights (and bias)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from memloc.core.errors import MemlocError

TRANSFORMER_KINDS = ("resid.pre", "attn.out", "mlp.post", "mlp.out", "resid.post")
CLASSIFIER_KINDS = ("out", "pre")
KINDS = TRANSFORMER_KINDS + CLASSIFIER_KINDS

_SITE_RE = re.compile(r"^blocks\.(0|[1-9][0-9]*)\.([a-z]+(?:\.[a-z]+)?)$")


class SiteError(MemlocError):
    """A site string or value is malformed."""


@dataclass(frozen=True, order=True)
class Site:
    """A place in a network: block ``layer``, activation ``kind``."""

    layer: int
    kind: str

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise SiteError(f"site layer must be a non-negative int, got {self.layer!r}")
        if self.kind not in KINDS:
            raise SiteError(f"unknown site kind {self.kind!r}; known kinds: {', '.join(KINDS)}")

    def __str__(self) -> str:
        return f"blocks.{self.layer}.{self.kind}"

    @classmethod
    def parse(cls, text: str) -> Site:
        """Parse the canonical form ``blocks.{layer}.{kind}``; nothing else is accepted."""
        match = _SITE_RE.match(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise SiteError(
                f"cannot parse site {text!r}; expected 'blocks.<layer>.<kind>', "
                f"e.g. 'blocks.3.mlp.post' or 'blocks.0.out'"
            )
        return cls(int(match.group(1)), match.group(2))


@dataclass(frozen=True, order=True)
class Unit:
    """One unit at a site: a neuron of a transformer MLP, or a classifier channel."""

    site: Site
    index: int

    def __str__(self) -> str:
        return f"{self.site}[{self.index}]"


# A transformer neuron: (layer, index into that layer's `mlp.post`), the input of the FFN
# down-projection (DESIGN.md). Knowledge neurons, interventions and neuron edits share it.
Neuron = tuple[int, int]
