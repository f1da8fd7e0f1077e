"""Split a long document into passages that each fit the encoder's window.

A passage's model input is exactly what `tokenize_texts` builds for the composed text
(`title.strip() + "\\n\\n" + passage` when the document has a title, else the passage) behind the
instruction, so its vector is the one `Encoder.encode` gives that text. Windows are counted in the
encoder's own tokens, instruction, title and special tokens included, and nothing is ever
truncated: each passage is re-tokenized in its context and its window shrunk when a boundary
effect (merges across the cut, the title, the instruction) made it longer than `chunk_tokens`.

How a document is cut:
1. its text is tokenized once, alone, with character offsets (fast tokenizers only, as
   `tokenize_texts` needs);
2. a window holds as many text tokens as `chunk_tokens` leaves after the instruction, the title
   and the special tokens;
3. the passage ends at the last paragraph break (preferred) or sentence end within the last
   quarter of the window, else at the token limit (moved back to a word start in that quarter
   if there is one, and never so that a character or a combining sequence is split);
4. the next passage starts `overlap` text tokens (at most half the window) before the previous
   one ended, moved forward to the next word start inside the overlap so none opens mid-word.
Spans are Python `str` indices into the text (never the title, never the instruction), stripped
of surrounding whitespace: `text[char_start:char_end]` is what was embedded. Every token of the
text that holds a non-space character lies inside some passage's span (the coverage property).
"""

from __future__ import annotations

import bisect
import math
import re
import unicodedata
from dataclasses import dataclass

from .tokenize import tokenize_texts

BREAK_ZONE = 0.25  # a passage may end early at a boundary found in the last quarter of its window
MIN_TEXT_TOKENS = 4  # the fewest text tokens a window must hold: any one character fits (<= 4 UTF-8 bytes)

# A blank line ends a paragraph: the break is right after its last non-space character.
_PARAGRAPH_END = re.compile(r"\S(?=[^\S\n]*\n\s*\n)")
# A sentence ends at . ! ? (plus closing quotes or brackets) before whitespace, or at CJK full stops.
_SENTENCE_END = re.compile(r"[.!?][\"'\u2019\u201d\u00bb)\]]*(?=\s)"
                           r"|[\u3002\uff01\uff1f][\"'\u2019\u201d\u300d\u300f)\]]*")
_JOINERS = {"\u200d", "\ufe0e", "\ufe0f"}  # zero-width joiner and variation selectors glue characters


@dataclass(frozen=True)
class Passage:
    """One window of a document, ready to embed."""

    chunk: int  # 0-based, in document order
    char_start: int  # text[char_start:char_end] is the passage: spans index the document's text,
    char_end: int  # never the title, never the instruction
    input_ids: list[int]  # exactly what the model sees: instruction, title, passage, special tokens
    pool_mask: list[int]  # 1 = pooled (title + passage tokens, as tokenize_texts pools), 0 = instruction/special


def check_chunking(tokenizer, *, chunk_tokens: int, overlap: int, max_length: int,
                   instruction: str | None = None) -> None:
    """Raise a ValueError saying how to fix settings that cannot give sensible passages.

    Call it once before a run: `split_document` then only fails on a document whose own title
    leaves no room for text."""
    _check_sizes(chunk_tokens, overlap)
    if chunk_tokens > max_length:
        raise ValueError(f"chunk_tokens={chunk_tokens} is more than max_length={max_length}: a passage must fit the "
                         f"encoder's window; lower --chunk-tokens to at most {max_length} (or raise --max-length)")
    overhead = _overhead(tokenizer, _prefix(instruction))
    room = chunk_tokens - overhead
    if room < MIN_TEXT_TOKENS:
        raise ValueError(f"the instruction and special tokens take {overhead} of chunk_tokens={chunk_tokens} tokens, "
                         f"leaving {max(room, 0)} for text (at least {MIN_TEXT_TOKENS} needed): raise --chunk-tokens "
                         f"or shorten the instruction")
    if overlap > room // 2:
        # A passage may end a quarter early at a boundary: an overlap over half the window would
        # leave the next passage almost nothing new (or nothing at all).
        raise ValueError(f"chunk_overlap={overlap} is more than half of the {room} text tokens a passage holds "
                         f"(chunk_tokens={chunk_tokens} less {overhead} for the instruction and special tokens); "
                         f"lower --chunk-overlap to at most {room // 2} (an eighth to a quarter of a window is usual)")


def split_document(tokenizer, text: str, *, chunk_tokens: int, overlap: int = 0,
                   title: str | None = None, instruction: str | None = None) -> list[Passage]:
    """Cut `text` into passages of at most `chunk_tokens` tokens each (see the module docstring).

    A text whose tokens fit one window gives one passage spanning the whole stripped text. An
    empty text, or a title so long that no text fits beside it, is a ValueError."""
    _check_sizes(chunk_tokens, overlap)
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the text is empty or whitespace: a document needs text to split into passages")
    head = f"{title.strip()}\n\n" if isinstance(title, str) and title.strip() else ""
    overhead = _overhead(tokenizer, _prefix(instruction) + head)
    room = chunk_tokens - overhead
    if room < MIN_TEXT_TOKENS:
        raise ValueError(f"the title, instruction and special tokens take {overhead} of chunk_tokens={chunk_tokens} "
                         f"tokens, leaving {max(room, 0)} for text (at least {MIN_TEXT_TOKENS} needed): shorten the "
                         f"title or raise --chunk-tokens")
    # At most half the window, as check_chunking asks: a long title can shrink the window below
    # the requested overlap, and such a document must not crawl forward a token per passage.
    overlap = min(overlap, room // 2)

    tokens = _TextTokens(tokenizer, text)
    passages: list[Passage] = []
    start = tokens.skip_space(0)  # every window starts at a token holding a non-space character
    while start < tokens.n:
        end, span, built = _fit_window(tokenizer, tokens, start, min(start + room, tokens.n), head, instruction,
                                       chunk_tokens)
        passages.append(Passage(len(passages), span[0], span[1], *built))
        if end >= tokens.n:
            break
        start = tokens.skip_space(tokens.next_start(start, end, overlap))
    return passages


def _fit_window(tokenizer, tokens: _TextTokens, start: int, limit: int, head: str, instruction: str | None,
                chunk_tokens: int):
    """-> (end, span, (input_ids, pool_mask)) for the passage of text tokens [start, end), end <= limit.

    The window estimate (`limit`) counts the text's own tokens; the composed passage can come out
    a little longer (tokens merge differently at the cut and after the title), so it is built and
    measured, and the limit lowered by the excess until it fits."""
    while True:
        end = tokens.n if limit >= tokens.n else _choose_end(tokens, start, limit)
        span = tokens.span(start, end)
        batch = tokenize_texts(tokenizer, [head + tokens.text[span[0]:span[1]]], instruction,
                               max_length=2 * chunk_tokens + 64)  # generous: a longer result is measured, not used
        length = batch.n_tokens[0] + (1 if batch.truncated[0] else 0)
        if length <= chunk_tokens:
            return end, span, (batch.input_ids[0], batch.pool_mask[0])
        limit = end - max(1, length - chunk_tokens)
        if limit <= start:
            raise ValueError(f"no text of this document fits chunk_tokens={chunk_tokens} beside its title and the "
                             f"instruction: raise --chunk-tokens")


def _choose_end(tokens: _TextTokens, start: int, limit: int) -> int:
    """Where a passage starting at token `start` ends (exclusive), at most `limit`: the last
    paragraph break in the window's last quarter, else the last sentence end there, else the limit."""
    lowest = start + max(1, math.ceil((1 - BREAK_ZONE) * (limit - start)))
    for cuts in (tokens.paragraph_cuts, tokens.sentence_cuts):
        i = bisect.bisect_right(cuts, limit) - 1
        if i >= 0 and cuts[i] >= lowest:
            return cuts[i]
    return tokens.clean_cut(start, lowest, limit)


class _TextTokens:
    """The document text tokenized alone: token offsets and the token indices where boundaries fall."""

    def __init__(self, tokenizer, text: str):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        self.text = text
        self.starts = [s for s, _ in encoded["offset_mapping"]]
        self.ends = [e for _, e in encoded["offset_mapping"]]
        self.n = len(self.starts)
        # A cut "before token k" for each boundary: k is the first token starting at or after it.
        self.paragraph_cuts = self._cuts(m.end() for m in _PARAGRAPH_END.finditer(text))
        self.sentence_cuts = self._cuts(m.end() for m in _SENTENCE_END.finditer(text))

    def _cuts(self, positions) -> list[int]:
        cuts = {bisect.bisect_left(self.starts, p) for p in positions}
        return sorted(k for k in cuts if 0 < k < self.n and self._clean(k))

    def _clean(self, k: int) -> bool:
        """Whether cutting before token k keeps every character (and combining sequence) whole:
        byte-level tokens can split one character, and their offsets then overlap."""
        if self.starts[k] < self.ends[k - 1]:
            return False
        here = self.starts[k]
        if here >= len(self.text) or here == 0:
            return True
        char, before = self.text[here], self.text[here - 1]
        return not (unicodedata.combining(char) or unicodedata.category(char) == "Me"
                    or char in _JOINERS or before == "\u200d")

    def _word_start(self, k: int) -> bool:
        here = self.starts[k]
        return self.text[here].isspace() or (here > 0 and self.text[here - 1].isspace())

    def clean_cut(self, start: int, lowest: int, limit: int) -> int:
        """The token limit, moved back to the nearest word start within [lowest, limit], else to
        the nearest cut that splits no character (the limit itself when the whole window is one
        unbreakable sequence, e.g. a run of joined emoji)."""
        for k in range(limit, lowest - 1, -1):
            if self._clean(k) and self._word_start(k):
                return k
        for k in range(limit, start, -1):
            if self._clean(k):
                return k
        return limit

    def next_start(self, start: int, end: int, overlap: int) -> int:
        """Where the passage after [start, end) starts: `overlap` tokens back, moved forward to a
        word start (else a whole character) so that it does not open mid-word; always past `start`."""
        back = max(end - overlap, start + 1)
        for k in range(back, end):
            if self._clean(k) and self._word_start(k):
                return k
        return next((k for k in range(back, end) if self._clean(k)), back)

    def skip_space(self, k: int) -> int:
        """The first token from k on holding a non-space character (a window spends no room on
        leading whitespace, which the span strips anyway; some tokenizers also give a prefix
        token an empty span)."""
        while k < self.n and not self.text[self.starts[k]:self.ends[k]].strip():
            k += 1
        return k

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The character span of tokens [start, end), stripped of whitespace (token `start` holds
        a non-space character, so the span is never empty)."""
        first, last = self.starts[start], self.ends[end - 1]
        while first < last and self.text[first].isspace():
            first += 1
        while last > first and self.text[last - 1].isspace():
            last -= 1
        return first, last


def _prefix(instruction: str | None) -> str:
    """The instruction as `tokenize_texts` prepends it."""
    return f"{instruction.strip()} " if instruction and instruction.strip() else ""


def _overhead(tokenizer, head: str) -> int:
    """Tokens that `head` (instruction prefix, title) and the special tokens add to a text: measured
    on a one-letter text, since the last character of `head` usually merges into the next token."""
    probe = "a"
    with_head = len(tokenizer(head + probe, add_special_tokens=True)["input_ids"])
    return with_head - len(tokenizer(probe, add_special_tokens=False)["input_ids"])


def _check_sizes(chunk_tokens, overlap) -> None:
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be a positive number of tokens, not {chunk_tokens!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"overlap must be a number of tokens >= 0, not {overlap!r}")
