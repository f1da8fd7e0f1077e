"""Packed batches (l2v_core/packing.py): the plan, the masks, and parity with the padded path."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from l2v_core import Encoder, EncoderSettings
from l2v_core.packing import (
    allowed_pairs,
    attention_masks,
    default_row_tokens,
    document_mask_mod,
    padded_row_length,
    plan_passes,
    plan_rows,
    pool_packed,
)
from l2v_core.testing import tiny_model_and_tokenizer

TEXTS = [
    "A cat sits on the mat. The dog sleeps in the sun.",
    "Ray Data streams blocks",
    "Vectors are normalized so that inner product equals cosine similarity; the quick brown fox.",
    "hi",
    "Bidirectional attention lets every token see every other token.",
    "Masked next token prediction reuses the language model head.",
    "0123456789",
]


def _encoder(family="llama", attn="sdpa", **settings):
    model, tokenizer = tiny_model_and_tokenizer(family, attn_implementation=attn)
    return Encoder(model, tokenizer, EncoderSettings(**settings))


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(1).min())


def test_plan_rows_places_every_text_once_within_the_row_budget():
    lengths = [5, 30, 12, 7, 40, 3, 3, 25, 70]
    rows = plan_rows(lengths, row_tokens=40)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    for row in rows:
        total = sum(lengths[i] for i in row)
        assert total <= 40 or len(row) == 1  # a text over the budget gets a row of its own
    assert rows == [[8], [4], [1, 3, 5], [7, 2, 6], [0]]  # 70 | 40 | 30+7+3 | 25+12+3 | 5: the fewest rows
    with pytest.raises(ValueError, match="row_tokens"):
        plan_rows(lengths, 0)


def test_plan_passes_keeps_rows_times_length_within_batch_tokens():
    lengths = [9, 8, 8, 7, 6, 5, 5, 4, 3, 2, 1]
    passes = plan_passes(lengths, batch_tokens=32, row_tokens=10)
    assert sorted(i for rows in passes for row in rows for i in row) == list(range(len(lengths)))
    for rows in passes:
        longest = max(sum(lengths[i] for i in row) for row in rows)
        assert len(rows) * longest <= 32


@pytest.mark.parametrize("family, attn", [("llama", "sdpa"), ("mistral", "sdpa"), ("qwen2", "sdpa"),
                                          ("gemma2", "eager"), ("llama", "eager")])
def test_packed_matches_padded(family, attn):
    """Tiny Mistral and Gemma 2 have a 4-token sliding window: longer texts exercise it."""
    encoder = _encoder(family, attn)
    padded = encoder.encode(TEXTS, batch_tokens=48)
    packed = encoder.encode(TEXTS, batch_tokens=48, packed=True)  # several passes of several texts
    assert _min_cosine(padded, packed) >= 0.9999


@pytest.mark.parametrize("pooling", ["mean", "weighted_mean", "last_token", "first_token"])
def test_packed_matches_padded_for_every_pooling_mode(pooling, tiny_llama):
    encoder = Encoder(*tiny_llama, EncoderSettings(pooling=pooling))
    for instruction in (None, "Represent the sentence:"):
        padded = encoder.encode(TEXTS, instruction)
        packed = encoder.encode(TEXTS, instruction, packed=True)
        assert _min_cosine(padded, packed) >= 0.9999, instruction


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_packed_causal_matches_padded(family):
    encoder = _encoder(family, bidirectional=False, pooling="last_token")
    assert _min_cosine(encoder.encode(TEXTS), encoder.encode(TEXTS, packed=True)) >= 0.9999


def test_several_rows_in_one_pass_with_tail_padding():
    encoder = _encoder()
    batch = encoder.tokenize(TEXTS)
    rows = [[0, 3], [2], [1, 4, 5, 6]]  # rows of different lengths: the shorter ones are padded
    with torch.no_grad():
        vectors = pool_packed(encoder.model, batch, rows, pad_id=encoder.tokenizer.pad_token_id, pooling="mean",
                              bidirectional=True)
    order = [i for row in rows for i in row]
    padded = encoder.encode_tokenized(batch, normalize=False)[order]
    np.testing.assert_allclose(vectors.numpy(), padded, rtol=1e-4, atol=1e-5)


def test_no_attention_across_texts():
    """Text A's vector must not move when text B, packed in the same row, changes."""
    encoder = _encoder()
    a = "A cat sits on the mat. The dog sleeps in the sun."
    before = encoder.encode([a, "Ray Data streams blocks of rows."], packed=True)
    after = encoder.encode([a, "Unicode: caf\u00e9, na\u00efve, \u00fcber and more words here."], packed=True)
    np.testing.assert_allclose(before[0], after[0], rtol=0, atol=1e-6)
    assert not np.allclose(before[1], after[1], atol=1e-3)
    # the two texts did share a row, and inside it attention is bidirectional
    batch = encoder.tokenize([a, "Ray Data streams blocks of rows."])
    assert plan_passes(batch.n_tokens, 16384, 1024) == [[[0, 1]]]
    edited = "A cat sits on the mat. The dog sleeps in the rain."
    assert not np.allclose(encoder.encode([edited], packed=True)[0][:4], before[0][:4], atol=1e-4)


def test_flex_mask_mod_equals_the_dense_mask():
    from torch.nn.attention.flex_attention import create_mask

    segments = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2, -1], [0, 0, 0, 0, 0, 0, 1, 1, -1, -1]])
    for causal in (False, True):
        for window in (None, 2):
            dense = allowed_pairs(segments, causal=causal, window=window)
            mod = document_mask_mod(segments, causal=causal, window=window)
            assert torch.equal(create_mask(mod, 2, 1, 10, 10, device="cpu"), dense)
    dense = allowed_pairs(segments, causal=False, window=None)
    assert dense[0, 0, 1, 2] and not dense[0, 0, 2, 3]  # inside a text yes, across texts no


def test_mask_forms_per_attention_implementation():
    segments = torch.tensor([[0, 0, 1, 1]])

    def model(implementation, **config):
        return types.SimpleNamespace(config=types.SimpleNamespace(_attn_implementation=implementation, **config))

    assert attention_masks(model("flash_attention_2"), segments, bidirectional=True, dtype=torch.float32) is None
    with pytest.raises(ValueError, match="one row"):
        attention_masks(model("flash_attention_2"), segments.repeat(2, 1), bidirectional=True, dtype=torch.float32)
    eager = attention_masks(model("eager"), segments, bidirectional=True, dtype=torch.float32)
    assert eager.dtype == torch.float32 and eager[0, 0, 0, 1] == 0 and eager[0, 0, 0, 2] < -1e30
    mixed = model("sdpa", layer_types=["full_attention", "sliding_attention"], sliding_window=1)
    masks = attention_masks(mixed, torch.tensor([[0, 0, 0, 1]]), bidirectional=True, dtype=torch.float32)
    assert set(masks) == {"full_attention", "sliding_attention"}
    assert masks["full_attention"][0, 0, 0, 2] and not masks["sliding_attention"][0, 0, 0, 2]
    with pytest.raises(ValueError, match="packed=False"):
        attention_masks(model("paged_attention"), segments, bidirectional=True, dtype=torch.float32)


def test_flash_attention_gets_one_row_per_pass_and_flex_few_shapes():
    flash = types.SimpleNamespace(config=types.SimpleNamespace(_attn_implementation="flash_attention_2"))
    lengths = [300, 200, 120, 90, 60, 500, 7]
    passes = plan_passes(lengths, 512, default_row_tokens(flash, 512))
    assert all(len(rows) == 1 for rows in passes)  # varlen packing reads one row of position_ids
    assert sorted(i for rows in passes for row in rows for i in row) == list(range(len(lengths)))
    assert [padded_row_length("flex_attention", n) for n in (3, 128, 129, 8000)] == [128, 128, 256, 8192]
    assert padded_row_length("sdpa", 129) == 129


def test_packed_refuses_a_padded_plan():
    encoder = _encoder()
    with pytest.raises(ValueError, match="packed=False"):
        encoder.encode_tokenized(encoder.tokenize(["a b"]), micro_batches=[[0]], packed=True)
