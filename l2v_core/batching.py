"""Micro-batches: texts sorted by length, cut by a token budget AND by a padding cap.

A token budget alone puts texts of very different lengths into one forward pass when the budget
is large compared to them (64 texts of 10-64 tokens fit 16k tokens at once: most of the pass is
padding). Here a micro-batch also closes when adding the next (shorter) text would push its
padding share over `max_padding`. Padding is wasted compute on every device.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_MAX_PADDING = 0.1


def plan_micro_batches(
    n_tokens: Sequence[int], batch_tokens: int, max_padding: float = DEFAULT_MAX_PADDING
) -> list[list[int]]:
    """Row indices, longest first, in groups with rows x longest <= batch_tokens (a longer text
    goes alone) and padded positions <= max_padding of all positions (1.0 turns the cap off)."""
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
    if not 0 <= max_padding <= 1:
        raise ValueError(f"max_padding must be in [0, 1], got {max_padding}")
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
    """Positions the forward passes of `groups` compute (rows x longest, summed)."""
    return sum(len(g) * max(n_tokens[i] for i in g) for g in groups)


def padding_share(n_tokens: Sequence[int], groups: list[list[int]]) -> float:
    """The fraction of padded positions in `groups` (what a batch plan wastes)."""
    padded = padded_positions(n_tokens, groups)
    real = sum(n_tokens[i] for g in groups for i in g)
    return 1.0 - real / padded if padded else 0.0
