import pytest

from l2v_core import check_texts, tokenize_texts
from l2v_core.testing import tiny_tokenizer

INSTRUCTION = "Retrieve semantically similar text:"


def _pooled_text(tokenizer, batch, i):
    ids = [t for t, m in zip(batch.input_ids[i], batch.pool_mask[i]) if m]
    return tokenizer.decode(ids)


def test_instruction_tokens_are_attended_but_not_pooled():
    tok = tiny_tokenizer()
    batch = tokenize_texts(tok, ["A cat sits on the mat."], INSTRUCTION)
    assert tok.decode(batch.input_ids[0]).startswith(INSTRUCTION + " ")
    assert _pooled_text(tok, batch, 0).strip() == "A cat sits on the mat."
    assert batch.pool_mask[0][0] == 0 and batch.pool_mask[0][-1] == 1


def test_without_instruction_every_text_token_is_pooled():
    tok = tiny_tokenizer()
    batch = tokenize_texts(tok, ["Unicode: café, 漢字 😀"])
    assert all(batch.pool_mask[0]) and batch.n_tokens[0] == len(batch.input_ids[0])
    assert batch.truncated == [False]


def test_long_text_is_truncated_and_flagged():
    tok = tiny_tokenizer()
    batch = tokenize_texts(tok, ["word " * 500, "short"], INSTRUCTION, max_length=32)
    assert batch.n_tokens[0] == 32 and batch.truncated == [True, False]


def test_instruction_longer_than_max_length_is_a_clear_error():
    with pytest.raises(ValueError, match="no tokens left after the instruction"):
        tokenize_texts(tiny_tokenizer(), ["text"], "a very long instruction " * 20, max_length=8)


@pytest.mark.parametrize(
    "texts,error,match",
    [
        ("a single string", TypeError, "list of strings"),
        (["ok", 3], TypeError, r"texts\[1\] is int"),
        (["ok", None], TypeError, r"texts\[1\] is NoneType"),
        (["ok", ""], ValueError, r"texts\[1\] is empty"),
        (["  \n"], ValueError, "empty or whitespace"),
    ],
)
def test_bad_texts_are_named(texts, error, match):
    with pytest.raises(error, match=match):
        check_texts(texts)
