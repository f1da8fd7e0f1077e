"""Cached-gradient (GradCache) training equals the plain computation; false negatives are masked."""

import pytest
import torch
import torch.nn.functional as F

from l2v_core import enable_bidirectional, tokenize_texts
from l2v_core.contrastive import (
    NO_TEXT,
    PooledEmbedder,
    false_negatives,
    supervised_contrastive_loss,
    text_key,
)
from l2v_core.grad_cache import cached_backward
from l2v_core.lora import apply_lora

QUERIES = ["A cat sits on the mat.", "The dog sleeps in the sun.", "Ray Data streams blocks.",
           "The quick brown fox jumps."]
POSITIVES = ["A cat is on a mat.", "A dog is sleeping.", "Ray streams data.", "A fox jumps."]
NEGATIVES = ["No cat is here.", None, "Ray stores nothing.", None]


def _batch(tokenizer):
    """All texts of the batch, right-padded in one tensor: queries, positives, present negatives."""
    negatives = [n for n in NEGATIVES if n]
    texts = QUERIES + POSITIVES + negatives
    tok = tokenize_texts(tokenizer, texts, max_length=32)
    width = max(len(r) for r in tok.input_ids)
    ids = torch.full((len(texts), width), tokenizer.pad_token_id)
    attention, pool = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, (row, mask) in enumerate(zip(tok.input_ids, tok.pool_mask)):
        ids[i, : len(row)], attention[i, : len(row)], pool[i, : len(row)] = torch.tensor(row), 1, torch.tensor(mask)
    keys = torch.tensor([[text_key(q), text_key(p), text_key(n) if n else NO_TEXT]
                         for q, p, n in zip(QUERIES, POSITIVES, NEGATIVES)])
    return ids, attention, pool, keys


def _loss_fn(keys):
    b = len(QUERIES)
    has = keys[:, 2] != NO_TEXT

    def loss(embeddings):
        negatives = torch.zeros_like(embeddings[:b]).index_put((has.nonzero()[:, 0],), embeddings[2 * b:])
        return supervised_contrastive_loss(embeddings[:b], embeddings[b: 2 * b], negatives, keys=keys)
    return loss


def _lora_embedder(tiny_llama, dropout):
    model, tokenizer = tiny_llama
    enable_bidirectional(model)
    torch.manual_seed(0)
    lora = apply_lora(model, r=4, alpha=8, dropout=dropout)
    for name, p in lora.named_parameters():  # LoRA B starts at 0: give it weights so A gets gradients too
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    return PooledEmbedder(lora).train(), lora, tokenizer


def _grads(lora):
    grads = {n: p.grad.clone() for n, p in lora.named_parameters() if p.requires_grad}
    lora.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize(("chunk_size", "dropout"), [(3, 0.0), (64, 0.2)],
                         ids=["chunks-of-3", "one-chunk-with-dropout-replayed"])
def test_cached_gradients_equal_the_plain_computation(tiny_llama, chunk_size, dropout):
    """Chunks of 3 rows (no dropout): same loss and LoRA gradients. One chunk with LoRA dropout:
    the re-run replays the first pass's dropout draws, so again the same."""
    embedder, lora, tokenizer = _lora_embedder(tiny_llama, dropout)
    ids, attention, pool, keys = _batch(tokenizer)
    loss_fn = _loss_fn(keys)

    torch.manual_seed(1)
    plain = loss_fn(embedder(ids, attention, pool))
    plain.backward()
    plain_grads = _grads(lora)
    torch.manual_seed(1)
    cached = cached_backward(embedder, ids, attention, pool, loss_fn, chunk_size=chunk_size)
    cached_grads = _grads(lora)

    assert cached.item() == pytest.approx(plain.item(), rel=1e-5)
    if dropout:  # the draws matter: another seed gives another loss, so the replay is what makes them equal
        torch.manual_seed(2)
        assert abs(loss_fn(embedder(ids, attention, pool)).item() - plain.item()) > 1e-4
    assert plain_grads.keys() == cached_grads.keys() and len(plain_grads) > 0
    assert any(g.abs().sum() > 0 for g in plain_grads.values())
    for name, grad in plain_grads.items():
        torch.testing.assert_close(cached_grads[name], grad, rtol=1e-4, atol=1e-5 * float(grad.abs().max()), msg=name)


def test_chunk_size_must_be_positive(tiny_llama):
    embedder, _, tokenizer = _lora_embedder(tiny_llama, 0.0)
    ids, attention, pool, keys = _batch(tokenizer)
    with pytest.raises(ValueError, match="chunk_size"):
        cached_backward(embedder, ids, attention, pool, _loss_fn(keys), chunk_size=0)


def test_false_negative_mask():
    # rows 0 and 1 share a query; row 2's positive repeats row 0's positive; row 3 has no negative
    keys = torch.tensor([[1, 10, 20], [1, 11, 21], [2, 10, 22], [3, 13, NO_TEXT]])
    mask = false_negatives(keys)
    assert mask.shape == (4, 8)
    assert not mask.diagonal().any()  # the targets
    assert mask[0, 1] and mask[1, 0]  # the other positive of the same query
    assert mask[0, 2] and mask[2, 0]  # the same positive text in another row
    assert mask[:, 7].all()  # row 3 has no hard negative
    assert not mask[0, 4] and not mask[0, 3] and not mask[3, 0]  # real negatives stay
    assert false_negatives(keys, with_negatives=False).shape == (4, 4)


def test_masked_loss_ignores_duplicates_and_missing_negatives():
    torch.manual_seed(3)
    q, p, n = torch.randn(3, 8), torch.randn(3, 8), torch.randn(3, 8)
    p[2] = p[0]  # row 2's positive is row 0's text
    keys = torch.tensor([[1, 10, 20], [2, 11, NO_TEXT], [3, 10, 22]])
    # by hand: row 0 sees positives 0, 1 and negatives 0, 2 (row 2's positive is the same text;
    # row 1 has no negative)
    cos = F.normalize(q, dim=-1) @ F.normalize(torch.cat([p, n]), dim=-1).T * 50
    keep = [[0, 1, 3, 5], [1, 0, 2, 3, 5], [2, 1, 3, 5]]  # target first
    expected = torch.stack([-F.log_softmax(cos[i, k], 0)[0] for i, k in enumerate(keep)]).mean()
    assert torch.allclose(supervised_contrastive_loss(q, p, n, keys=keys), expected, atol=1e-5)
    # without keys every row counts as a negative (the old behaviour)
    assert not torch.allclose(supervised_contrastive_loss(q, p, n), expected, atol=1e-3)


def test_text_key_is_stable_and_never_no_text():
    assert text_key("a cat") == text_key("a cat") != text_key("a cat.")
    assert text_key("") != NO_TEXT
