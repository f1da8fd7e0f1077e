"""Tokenize texts (optionally behind an instruction) and mark which tokens are pooled.

The model sees `instruction.strip() + " " + text` (the reference library's format). The text's
tokens are found through character offsets: a token is pooled when it overlaps the text and is
not a special token. No sentinel strings, no token counting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class TokenizedBatch:
    """Unpadded token lists (plain Python lists: cheap to ship through Ray Data as columns)."""

    input_ids: list[list[int]] = field(default_factory=list)
    pool_mask: list[list[int]] = field(default_factory=list)  # 1 = pooled text token
    n_tokens: list[int] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


def check_texts(texts: Sequence[str]) -> list[str]:
    """A list of non-empty strings, or a clear error naming the first bad entries."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a list of strings; wrap a single text as [text]")
    texts = list(texts)
    bad_type = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad_type:
        i = bad_type[0]
        raise TypeError(
            f"texts[{i}] is {type(texts[i]).__name__}, not str ({len(bad_type)} non-string entries in all)"
        )
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise ValueError(
            f"texts[{empty[0]}] is empty or whitespace ({len(empty)} such entries at {empty[:10]}): "
            f"an empty text has no tokens to pool; drop or fill such rows before encoding"
        )
    return texts


def tokenize_texts(
    tokenizer, texts: Sequence[str], instruction: str | None = None, max_length: int = 512
) -> TokenizedBatch:
    """Tokenize `texts` (checked with `check_texts`) for encoding; truncates to `max_length` tokens."""
    texts = check_texts(texts)
    if not texts:
        return TokenizedBatch()
    prefix = f"{instruction.strip()} " if instruction and instruction.strip() else ""
    encoded = tokenizer(
        [prefix + t for t in texts],
        add_special_tokens=True,
        truncation=True,
        max_length=max_length,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        return_overflowing_tokens=False,
        return_length=False,
    )
    batch = TokenizedBatch()
    text_start = len(prefix)
    for i, text in enumerate(texts):
        ids = encoded["input_ids"][i]
        specials = encoded["special_tokens_mask"][i]
        offsets = encoded["offset_mapping"][i]
        pool_mask = [int(not special and end > text_start) for (_, end), special in zip(offsets, specials)]
        if not any(pool_mask):
            raise ValueError(
                f"texts[{i}] has no tokens left after the instruction ({len(ids)} tokens, max_length={max_length}); "
                f"shorten the instruction or raise max_length"
            )
        last_char = max((end for (_, end), s in zip(offsets, specials) if not s), default=0)
        batch.input_ids.append(list(ids))
        batch.pool_mask.append(pool_mask)
        batch.n_tokens.append(len(ids))
        batch.truncated.append(last_char < text_start + len(text.rstrip()))
    return batch
