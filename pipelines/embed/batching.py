"""Micro-batches inside one Ray batch: sorted by length, cut by a token budget AND by padding.

A token budget alone puts short texts of very different lengths into one forward pass when the
budget is large compared to them (64 texts of 10-64 tokens fit 16k tokens at once: most of the
pass is padding). Here a micro-batch also closes when adding the next (shorter) text would push
its padding share over `max_padding`.
"""

from __future__ import annotations

from typing import Sequence


def plan_groups(n_tokens: Sequence[int], batch_tokens: int, max_padding: float = 0.1) -> list[list[int]]:
    """Row indices, longest first, in groups with rows x longest <= batch_tokens (a longer text
    goes alone) and padded positions <= max_padding of all positions."""
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
    if not 0 <= max_padding < 1:
        raise ValueError(f"max_padding must be in [0, 1), got {max_padding}")
    order = sorted(range(len(n_tokens)), key=lambda i: -n_tokens[i])
    groups: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        if current:
            longest = n_tokens[current[0]]
            rows = len(current) + 1
            too_big = rows * longest > batch_tokens
            too_padded = 1 - (real + n_tokens[i]) / (rows * longest) > max_padding
            if too_big or too_padded:
                groups.append(current)
                current, real = [], 0
        current.append(i)
        real += n_tokens[i]
    if current:
        groups.append(current)
    return groups


def padded_positions(n_tokens: Sequence[int], groups: list[list[int]]) -> int:
    return sum(len(g) * max(n_tokens[i] for i in g) for g in groups)
