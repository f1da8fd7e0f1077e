"""Packed batches: several texts share one row with no padding between them.

A padded micro-batch computes `rows x longest` positions; a packed one computes about the real
token count. Each text keeps its own attention block (block-diagonal: no token sees another
text), its own positions (restarting at 0, so rotary embeddings see what they see unpacked) and
is pooled on its own. The vectors equal the padded path's up to rounding (tests/test_core_packing.py).

One mechanism for every family: the model is given the attention mask explicitly, in the form
its attention implementation reads (transformers uses a prepared 4-D mask or BlockMask as is):
- `sdpa`: a boolean (rows, 1, L, L) mask (SDPA's memory-efficient kernel takes arbitrary masks);
- `eager`: the same as an additive float mask;
- `flex_attention`: a FlexAttention BlockMask (document masking: fully masked tiles are skipped);
- flash-attention implementations: no mask, one row per pass, and `position_ids` restarting at
  each text, from which transformers derives flash-attention's variable-length call.
Families whose layers mix full and sliding-window attention (Gemma 2, Qwen 2 with windows) get
one mask per layer type, which their forward accepts as a dict; a model-wide window (Mistral,
Phi-3) is folded into the single mask. Window rules follow transformers' masking_utils: causal
`q - w < kv <= q`, bidirectional `|q - kv| <= w`.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .pooling import pool
from .tokenize import TokenizedBatch

DEFAULT_ROW_TOKENS = 1024  # dense masks cost rows x L^2: keep rows short unless the kernel skips tiles
FLEX_ROW_TOKENS = 8192  # FlexAttention skips masked tiles, but its BlockMask is built from a dense L x L grid
_PAD_SEGMENT = -1


@dataclass(frozen=True)
class PackedRows:
    """One forward pass: texts laid end to end in rows of equal length."""

    input_ids: torch.Tensor  # (rows, L) long
    position_ids: torch.Tensor  # (rows, L) long: 0.. within each text
    segment_ids: torch.Tensor  # (rows, L) long: the text's slot in its row; tail padding has its own
    spans: tuple[tuple[int, int, int], ...]  # per text, in pass order: (row, start, length)


def plan_rows(n_tokens: Sequence[int], row_tokens: int) -> list[list[int]]:
    """Text indices grouped into rows of at most `row_tokens` tokens (a longer text gets a row of
    its own), best-fit decreasing: each text, longest first, goes to the fullest row it fits."""
    if row_tokens < 1:
        raise ValueError(f"row_tokens must be positive, got {row_tokens}")
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted
    for i in sorted(range(len(n_tokens)), key=lambda i: -n_tokens[i]):
        n = n_tokens[i]
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            room, row = free.pop(at)
        else:
            rows.append([])
            room, row = max(row_tokens, n), len(rows) - 1
        rows[row].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, row))
    return rows


def plan_passes(n_tokens: Sequence[int], batch_tokens: int, row_tokens: int) -> list[list[list[int]]]:
    """Forward passes, each a list of rows (lists of text indices): rows x row length stays within
    `batch_tokens` (one row at least)."""
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
    rows = plan_rows(n_tokens, row_tokens)
    passes: list[list[list[int]]] = []
    current: list[list[int]] = []
    for row in rows:  # in the order they were opened: full rows first, the emptier last ones together
        length = max(row_length(n_tokens, r) for r in current + [row])
        if current and (len(current) + 1) * length > batch_tokens:
            passes.append(current)
            current = []
        current.append(row)
    if current:
        passes.append(current)
    return passes


def row_length(n_tokens: Sequence[int], row: list[int]) -> int:
    return sum(n_tokens[i] for i in row)


def default_row_tokens(model, batch_tokens: int) -> int:
    """Long rows for kernels that skip masked work (flash varlen: one row per pass; FlexAttention);
    short rows for dense masks, whose cost grows with the square of the row length."""
    implementation = str(model.config._attn_implementation)
    if "flash" in implementation:
        return batch_tokens
    if implementation == "flex_attention":
        return min(batch_tokens, FLEX_ROW_TOKENS)
    return min(batch_tokens, DEFAULT_ROW_TOKENS)


def padded_row_length(implementation: str, longest: int) -> int:
    """The row length of a pass whose longest row holds `longest` tokens. FlexAttention is compiled
    for each new shape: powers of two keep the shapes (and the recompiles) few."""
    if implementation == "flex_attention":
        return max(128, 1 << (longest - 1).bit_length())
    return longest


def pack(batch: TokenizedBatch, rows: list[list[int]], pad_id: int, length: int = 0) -> PackedRows:
    """Lay the texts of `rows` end to end; rows are right-padded to the longest row (or `length`)."""
    length = max(length, max(row_length(batch.n_tokens, row) for row in rows))
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), length), dtype=torch.long)
    segments = torch.full((len(rows), length), _PAD_SEGMENT, dtype=torch.long)
    spans = []
    for r, row in enumerate(rows):
        start = 0
        for slot, i in enumerate(row):
            n = batch.n_tokens[i]
            ids[r, start : start + n] = torch.tensor(batch.input_ids[i])
            positions[r, start : start + n] = torch.arange(n)
            segments[r, start : start + n] = slot
            spans.append((r, start, n))
            start += n
        positions[r, start:] = torch.arange(length - start)  # padding: a block of its own
    return PackedRows(ids, positions, segments, tuple(spans))


def allowed_pairs(segments: torch.Tensor, *, causal: bool, window: int | None) -> torch.Tensor:
    """(rows, 1, L, L) bool: query i may attend key j."""
    q = torch.arange(segments.shape[1], device=segments.device)
    same = segments[:, None, :, None] == segments[:, None, None, :]
    delta = q[:, None] - q[None, :]  # query index - key index
    if causal:
        same = same & (delta >= 0)
        if window is not None:
            same = same & (delta < window)
    elif window is not None:
        same = same & (delta.abs() <= window)
    return same


def document_mask_mod(segments: torch.Tensor, *, causal: bool, window: int | None):
    """The FlexAttention `mask_mod` of `allowed_pairs`: the same rule, one (query, key) pair at a time."""

    def mask_mod(b, h, q, kv):
        keep = segments[b, q] == segments[b, kv]
        if causal:
            keep = keep & (kv <= q)
            if window is not None:
                keep = keep & (q - kv < window)
        elif window is not None:
            keep = keep & ((q - kv).abs() <= window)
        return keep

    return mask_mod


def _block_mask(segments: torch.Tensor, *, causal: bool, window: int | None):
    from torch.nn.attention.flex_attention import create_block_mask

    rows, length = segments.shape
    mask_mod = document_mask_mod(segments, causal=causal, window=window)
    return create_block_mask(mask_mod, rows, None, length, length, device=segments.device)


def _layer_windows(config) -> dict[str | None, int | None]:
    """Attention window per layer type (`None` key: one mask for every layer)."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types and len(set(layer_types)) > 1:
        windows = {}
        for kind in set(layer_types):
            if kind == "full_attention":
                windows[kind] = None
            elif kind == "sliding_attention":
                windows[kind] = config.sliding_window
            else:
                raise ValueError(f"packed batches support full and sliding-window attention layers, not {kind!r}; "
                                 f"encode with packed=False")
        return windows
    if layer_types:
        return {None: config.sliding_window if layer_types[0] == "sliding_attention" else None}
    return {None: getattr(config, "sliding_window", None)}


def attention_masks(model, segments: torch.Tensor, *, bidirectional: bool, dtype: torch.dtype):
    """What `model(attention_mask=...)` needs for these packed rows (see the module docstring)."""
    implementation = str(model.config._attn_implementation)
    if "flash" in implementation:
        if segments.shape[0] != 1:
            raise ValueError("flash-attention packing takes one row per pass (position_ids mark the texts)")
        return None
    if implementation == "sdpa":
        build = lambda w: allowed_pairs(segments, causal=not bidirectional, window=w)  # noqa: E731
    elif implementation == "eager":
        def build(w):
            allowed = allowed_pairs(segments, causal=not bidirectional, window=w)
            return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill(
                ~allowed, torch.finfo(dtype).min)
    elif implementation == "flex_attention":
        build = lambda w: _block_mask(segments, causal=not bidirectional, window=w)  # noqa: E731
    else:
        raise ValueError(f"packed batches support sdpa, eager, flex_attention and flash attention, "
                         f"not {implementation!r}; encode with packed=False")
    windows = _layer_windows(model.config)
    if list(windows) == [None]:
        return build(windows[None])
    return {kind: build(window) for kind, window in windows.items()}


def packed_hidden(model, packed: PackedRows, *, bidirectional: bool) -> torch.Tensor:
    """Last hidden states (rows, L, d) of one packed pass."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    segments = packed.segment_ids.to(device)
    mask = attention_masks(model, segments, bidirectional=bidirectional, dtype=dtype)
    out = model(input_ids=packed.input_ids.to(device), attention_mask=mask,
                position_ids=packed.position_ids.to(device), use_cache=False)
    return out.last_hidden_state


def unpack(hidden: torch.Tensor, spans: Sequence[tuple[int, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed (rows, L, d) -> (texts, longest, d) right-padded, and its (texts, longest) mask."""
    longest = max(n for _, _, n in spans)
    offsets = torch.arange(longest)
    rows = torch.tensor([r for r, _, _ in spans])[:, None].expand(-1, longest)
    starts = torch.tensor([s for _, s, _ in spans])[:, None]
    lengths = torch.tensor([n for _, _, n in spans])[:, None]
    real = offsets[None, :] < lengths
    columns = torch.where(real, starts + offsets[None, :], starts)  # padding reads the text's first token
    gathered = hidden[rows.to(hidden.device), columns.to(hidden.device)]
    return gathered, real.long().to(hidden.device)


def pool_packed(model, batch: TokenizedBatch, rows: list[list[int]], *, pad_id: int, pooling: str,
                bidirectional: bool) -> torch.Tensor:
    """One packed pass over the texts of `rows` -> float32 (texts, d), in `rows` order flattened."""
    longest = max(row_length(batch.n_tokens, row) for row in rows)
    packed = pack(batch, rows, pad_id, padded_row_length(str(model.config._attn_implementation), longest))
    hidden = packed_hidden(model, packed, bidirectional=bidirectional)
    per_text, attention = unpack(hidden, packed.spans)
    order = [i for row in rows for i in row]
    pool_mask = torch.zeros(attention.shape, dtype=torch.long)  # filled on the host, copied once
    for j, i in enumerate(order):
        pool_mask[j, : batch.n_tokens[i]] = torch.tensor(batch.pool_mask[i])
    return pool(per_text.float(), pool_mask.to(attention.device), pooling, attention)
