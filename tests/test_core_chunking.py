"""The splitter (l2v_core.chunking): boundaries, overlap, titles, instructions, one huge word,
unicode, the coverage property, and that every passage is exactly what `tokenize_texts` builds
and never longer than the window."""

import random
import unicodedata

import pytest

from l2v_core import check_chunking, split_document, tokenize_texts
from l2v_core.testing import tiny_tokenizer

INSTRUCTION = "Retrieve semantically similar text:"
SENTENCES = ["A cat sits on the mat.", "The dog sleeps in the sun!", "Ray Data streams blocks of rows.",
             "Is every token seen by every other token?", "Vectors are normalized so that cosine is inner product."]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _text_tokens(tok, text):
    """(start, end) of every text token holding a non-space character, stripped of spaces."""
    spans = []
    for s, e in tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if s < e:
            spans.append((s, e))
    return spans


def _check_passages(tok, text, passages, *, chunk_tokens, title=None, instruction=None):
    """The invariants every split keeps (the contract of l2v_core.chunking)."""
    assert [p.chunk for p in passages] == list(range(len(passages)))
    head = f"{title.strip()}\n\n" if title and title.strip() else ""
    for p in passages:
        assert len(p.input_ids) <= chunk_tokens
        assert 0 <= p.char_start < p.char_end <= len(text)
        passage = text[p.char_start:p.char_end]
        assert passage == passage.strip()
        # exactly what tokenize_texts builds for the composed text: same ids, same pooled tokens
        expected = tokenize_texts(tok, [head + passage], instruction, max_length=10 * chunk_tokens)
        assert (p.input_ids, p.pool_mask) == (expected.input_ids[0], expected.pool_mask[0])
    starts = [p.char_start for p in passages]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    # coverage: every token of the text lies inside some passage's span
    for s, e in _text_tokens(tok, text):
        assert any(p.char_start <= s and e <= p.char_end for p in passages), (s, e, text[s:e])


def test_a_text_shorter_than_one_window_is_one_passage_of_the_stripped_text(tok):
    text = "  \n A cat sits on the mat. The dog sleeps.\n\n "
    [p] = split_document(tok, text, chunk_tokens=64, overlap=8)
    assert (p.chunk, text[p.char_start:p.char_end]) == (0, text.strip())
    assert p.input_ids == tokenize_texts(tok, [text.strip()]).input_ids[0] and all(p.pool_mask)


def test_a_paragraph_break_in_the_last_quarter_is_preferred_over_later_sentence_ends(tok):
    first = " ".join(SENTENCES * 2)  # about 80% of a 120-token window: sentence ends of the next paragraph fit too
    n_first = len(tok(first)["input_ids"])
    assert 0.75 * 120 < n_first < 120 - 12
    text = first + "\n\n" + " ".join(SENTENCES * 4)
    passages = split_document(tok, text, chunk_tokens=120)
    assert text[passages[0].char_start:passages[0].char_end] == first
    assert text[passages[1].char_start:].startswith(SENTENCES[0])
    _check_passages(tok, text, passages, chunk_tokens=120)


def test_passages_end_at_sentence_ends_when_one_lies_in_the_last_quarter(tok):
    rng = random.Random(0)
    text = " ".join(rng.choice(SENTENCES) for _ in range(60))  # sentences of 6-14 tokens, no paragraphs
    passages = split_document(tok, text, chunk_tokens=64)
    assert len(passages) > 5
    for p in passages:
        assert text[p.char_end - 1] in ".!?"
        assert text[p.char_start] in "ARIVT"  # a sentence's first word
    _check_passages(tok, text, passages, chunk_tokens=64)


def test_without_boundaries_passages_fill_the_window_and_end_between_words(tok):
    rng = random.Random(1)
    words = [w.strip(".!?").lower() for s in SENTENCES for w in s.split()]
    text = " ".join(rng.choice(words) for _ in range(800))
    passages = split_document(tok, text, chunk_tokens=48)
    for p in passages[:-1]:
        assert len(p.input_ids) > 0.75 * 48
        assert text[p.char_end] == " "  # the cut falls between words
    _check_passages(tok, text, passages, chunk_tokens=48)


def test_consecutive_passages_share_about_overlap_tokens(tok):
    rng = random.Random(2)
    text = " ".join(rng.choice(SENTENCES) for _ in range(80))
    passages = split_document(tok, text, chunk_tokens=64, overlap=12)
    tokens = _text_tokens(tok, text)
    for before, after in zip(passages, passages[1:]):
        shared = [t for t in tokens if after.char_start <= t[0] and t[1] <= before.char_end]
        assert 12 - 5 <= len(shared) <= 12, (before, after)  # moved forward to a word start, at most a word
        assert text[after.char_start - 1] == " "  # a passage never opens mid-word
    _check_passages(tok, text, passages, chunk_tokens=64)
    assert len(passages) > len(split_document(tok, text, chunk_tokens=64))


def test_the_title_is_prepended_to_every_passage_and_counted_in_the_window(tok):
    text = " ".join(SENTENCES * 20)
    title = "  Cats and dogs  "
    passages = split_document(tok, text, chunk_tokens=48, title=title)
    for p in passages:
        assert tok.decode(p.input_ids) == f"Cats and dogs\n\n{text[p.char_start:p.char_end]}"
        assert sum(p.pool_mask) == len(p.input_ids)  # the title is pooled, as tokenize_texts pools it
    _check_passages(tok, text, passages, chunk_tokens=48, title=title)
    assert len(passages) > len(split_document(tok, text, chunk_tokens=48))
    assert split_document(tok, text, chunk_tokens=48, title="  ") == split_document(tok, text, chunk_tokens=48)


def test_the_instruction_is_counted_in_the_window_and_not_pooled(tok):
    text = " ".join(SENTENCES * 20)
    passages = split_document(tok, text, chunk_tokens=48, title="Pets", instruction=INSTRUCTION)
    n_instruction = len(tok(INSTRUCTION)["input_ids"])
    for p in passages:
        assert tok.decode(p.input_ids).startswith(f"{INSTRUCTION} Pets\n\n")
        assert p.pool_mask[:n_instruction] == [0] * n_instruction and p.pool_mask[-1] == 1
    _check_passages(tok, text, passages, chunk_tokens=48, title="Pets", instruction=INSTRUCTION)
    assert len(passages) > len(split_document(tok, text, chunk_tokens=48, title="Pets"))


def test_one_huge_word_is_cut_at_the_token_limit(tok):
    text = "".join(random.Random(3).choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(5000))
    passages = split_document(tok, text, chunk_tokens=64)
    assert len(passages) > 10
    assert all(len(p.input_ids) >= 62 for p in passages[:-1])  # full windows (a cut merge may cost a token)
    assert [p.char_start for p in passages[1:]] == [p.char_end for p in passages[:-1]]  # contiguous, no overlap
    assert "".join(text[p.char_start:p.char_end] for p in passages) == text
    _check_passages(tok, text, passages, chunk_tokens=64)


def test_unicode_spans_are_str_indices_and_never_split_a_character(tok):
    text = ("Unicode: café, nai\u0308ve, e\u0301, 漢字の文。絵文字😀👨\u200d👩\u200d👧 ok! " * 25).strip()
    for overlap in (0, 4):
        passages = split_document(tok, text, chunk_tokens=24, overlap=overlap)
        assert len(passages) > 10
        for p in passages:
            passage = text[p.char_start:p.char_end]
            assert tok.decode(p.input_ids) == passage  # what was embedded is exactly text[start:end]
            assert not unicodedata.combining(passage[0]) and passage[0] != "\u200d"
            assert text[p.char_end:p.char_end + 1] not in ("\u0301", "\u0308", "\u200d")
        _check_passages(tok, text, passages, chunk_tokens=24)


def test_coverage_and_window_over_random_texts(tok):
    rng = random.Random(4)
    pieces = [*SENTENCES, "\n\n", "\n", "  ", "漢字。", "😀", "e\u0301", "supercalifragilistic" * 5, "(see [1])."]
    for _ in range(12):
        text = " ".join(rng.choice(pieces) for _ in range(rng.randint(1, 150)))
        if not text.strip():
            continue
        chunk_tokens = rng.randint(48, 96)  # at least 14 text tokens beside the instruction and a title
        overlap = rng.randint(0, chunk_tokens // 4)
        title = rng.choice([None, "", "A title", "Überschrift 漢字"])
        instruction = rng.choice([None, INSTRUCTION])
        passages = split_document(tok, text, chunk_tokens=chunk_tokens, overlap=overlap, title=title,
                                  instruction=instruction)
        _check_passages(tok, text, passages, chunk_tokens=chunk_tokens, title=title, instruction=instruction)


def test_the_default_models_tokenizer(default_encoder):
    tok = default_encoder.tokenizer
    text = "\n\n".join(" ".join(SENTENCES[i:] + SENTENCES[:i]) * 3 for i in range(5)) + " 漢字😀 e\u0301nd."
    passages = split_document(tok, text, chunk_tokens=64, overlap=8, title="Pets", instruction=INSTRUCTION)
    assert len(passages) > 3
    _check_passages(tok, text, passages, chunk_tokens=64, title="Pets", instruction=INSTRUCTION)
    check_chunking(tok, chunk_tokens=64, overlap=8, max_length=512, instruction=INSTRUCTION)


@pytest.mark.parametrize("kwargs,match", [
    (dict(chunk_tokens=600, overlap=0, max_length=512), "lower --chunk-tokens to at most 512"),
    (dict(chunk_tokens=32, overlap=17, max_length=512), "lower --chunk-overlap to at most 16"),
    (dict(chunk_tokens=16, overlap=0, max_length=512, instruction=INSTRUCTION * 3), "shorten the instruction"),
    (dict(chunk_tokens=0, overlap=0, max_length=512), "positive number of tokens"),
    (dict(chunk_tokens=64, overlap=-1, max_length=512), "overlap must be"),
])
def test_check_chunking_says_how_to_fix_bad_settings(tok, kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_chunking(tok, **kwargs)


def test_check_chunking_accepts_sane_settings_and_counts_the_instruction(tok):
    check_chunking(tok, chunk_tokens=64, overlap=32, max_length=64)
    n_instruction = len(tok(INSTRUCTION)["input_ids"])  # its trailing space merges into the text's first token
    check_chunking(tok, chunk_tokens=64, overlap=(64 - n_instruction) // 2, max_length=128, instruction=INSTRUCTION)
    with pytest.raises(ValueError, match="chunk-overlap"):
        check_chunking(tok, chunk_tokens=64, overlap=32, max_length=128, instruction=INSTRUCTION)


def test_split_document_errors(tok):
    with pytest.raises(ValueError, match="empty or whitespace"):
        split_document(tok, " \n ", chunk_tokens=64)
    with pytest.raises(ValueError, match="shorten the title"):
        split_document(tok, "A cat.", chunk_tokens=16, title="a very long title " * 5)
    # a title leaving a window under twice the overlap caps the overlap at half the window (each
    # passage still brings at least a quarter of a window of new text) instead of crawling
    text, title = " ".join(SENTENCES * 10), "a long title " * 2
    passages = split_document(tok, text, chunk_tokens=40, overlap=20, title=title)
    _check_passages(tok, text, passages, chunk_tokens=40, title=title)
    assert len(passages) <= 4 * len(split_document(tok, text, chunk_tokens=40, title=title)) + 1
