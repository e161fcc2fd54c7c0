"""The one way the CLI opens a language model from its shared options."""

from __future__ import annotations

from memloc.cli.options import Dtype, document_start
from memloc.core.lm.loading import load_language_model
from memloc.core.lm.model import LM


def load_lm(model: str, device: str, dtype: Dtype, trust_remote_code: bool, doc_start: str) -> LM:
    """--model, --device, --dtype, --trust-remote-code and --doc-start, as load_language_model takes them."""
    return load_language_model(
        model,
        device=device,
        dtype=dtype.value,
        trust_remote_code=trust_remote_code,
        document_start=document_start(doc_start),
    )
