"""Pool token states into one vector per text.

`pool_mask` marks the tokens that are pooled (the text's tokens: padding and instruction tokens
are 0); `attention_mask` marks every real token. Both work for left or right padding.
"""

from __future__ import annotations

import torch

from .settings import POOLING_MODES


def pool(
    hidden: torch.Tensor, pool_mask: torch.Tensor, mode: str = "mean", attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """hidden: (b, s, d), pool_mask: (b, s), attention_mask: (b, s) or None -> (b, d), in hidden's dtype.

    - mean: average of the text tokens
    - weighted_mean: weights 1..n over the text tokens (later tokens, which saw more, weigh more)
    - last_token: the last real token (EOS where the tokenizer appends one)
    - first_token: the first real token (BOS where the tokenizer prepends one)
    """
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling mode {mode!r}; valid modes: {', '.join(POOLING_MODES)}")
    if hidden.dim() != 3 or pool_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"expected hidden (b, s, d) and pool_mask (b, s); got {tuple(hidden.shape)} and {tuple(pool_mask.shape)}"
        )
    mask = pool_mask.to(hidden.dtype)
    if mode == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    if mode == "weighted_mean":
        weights = mask.cumsum(1) * mask
        return (hidden * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp(min=1e-9)
    real = (attention_mask if attention_mask is not None else pool_mask).bool()
    positions = torch.arange(hidden.shape[1], device=hidden.device).expand_as(real)
    if mode == "last_token":
        index = torch.where(real, positions, -1).max(1).values.clamp(min=0)
    else:  # first_token
        index = torch.where(real, positions, hidden.shape[1]).min(1).values.clamp(max=hidden.shape[1] - 1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
