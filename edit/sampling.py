"""Top-k sampling of next tokens, shared by the generated corpus and the context templates.

token = top_k_sample(logits, 50, torch.Generator().manual_seed(0))  # (B, 1)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def top_k_sample(
    logits: torch.Tensor, k: int, generator: torch.Generator | Sequence[torch.Generator]
) -> torch.Tensor:
    """One token id per row of ``logits`` (B, V), drawn from its renormalised top ``k``.

    One generator draws the whole batch; a sequence of B generators draws row by row on
    the CPU, so that each row's text does not depend on which rows share its batch.
    """
    top, index = logits.float().topk(min(k, logits.shape[-1]), dim=-1)
    probs = torch.softmax(top, dim=-1)
    if isinstance(generator, torch.Generator):
        pick = torch.multinomial(probs, 1, generator=generator)
    else:
        rows = probs.cpu()
        pick = torch.stack(
            [torch.multinomial(p, 1, generator=g) for p, g in zip(rows, generator, strict=True)]
        )
    return index.gather(-1, pick.to(index.device))
