"""SimCSE and supervised contrastive losses, including the cross-worker gather hook."""

import math

import torch
import torch.nn.functional as F

from l2v_core.contrastive import set_attention_dropout, simcse_loss, supervised_contrastive_loss
from l2v_core.testing import tiny_model_and_tokenizer


def test_simcse_is_cross_entropy_of_scaled_cosine():
    torch.manual_seed(0)
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    sims = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    expected = F.cross_entropy(sims * 20, torch.arange(4))
    assert torch.allclose(simcse_loss(a, b), expected)


def test_simcse_identical_views_far_apart_give_a_small_loss():
    a = torch.eye(6) * 3
    assert simcse_loss(a, a.clone()).item() < 1e-6
    # one row's positive is orthogonal, the others equal: a large loss
    assert simcse_loss(torch.ones(6, 6), torch.ones(6, 6)).item() > math.log(6) - 1e-4


def test_gather_hook_makes_two_halves_equal_to_the_whole_batch():
    torch.manual_seed(1)
    a, b = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
    whole = simcse_loss(a, b)
    # pretend to be rank 0 of 2: the gather returns rank 0's rows then rank 1's
    halves = {"a": (a[:4], a[4:]), "b": (b[:4], b[4:])}
    calls = iter(["a", "b"])
    def gather(t):
        key = next(calls)
        return torch.cat([t, halves[key][1]])
    assert torch.allclose(simcse_loss(a[:4], b[:4], gather_fn=gather), whole)


def test_supervised_loss_with_hard_negatives_scale_50():
    torch.manual_seed(2)
    q, p, n = torch.randn(3, 8), torch.randn(3, 8), torch.randn(3, 8)
    cand = F.normalize(torch.cat([p, n]), dim=-1)
    expected = F.cross_entropy(F.normalize(q, dim=-1) @ cand.T * 50, torch.arange(3))
    assert torch.allclose(supervised_contrastive_loss(q, p, n), expected)
    assert supervised_contrastive_loss(q, p).shape == ()


def test_mismatched_views_are_refused():
    try:
        simcse_loss(torch.randn(2, 4), torch.randn(3, 4))
    except ValueError as err:
        assert "same shape" in str(err)
    else:
        raise AssertionError("expected ValueError")


def test_attention_dropout_is_set_on_every_layer_and_changes_training_outputs():
    model, tok = tiny_model_and_tokenizer("llama")
    assert set_attention_dropout(model, 0.3) == 2
    ids = tok(["The quick brown fox jumps over the lazy dog."], return_tensors="pt")
    model.train()
    torch.manual_seed(0)
    h1 = model(**ids).last_hidden_state
    h2 = model(**ids).last_hidden_state
    assert not torch.allclose(h1, h2)
    model.eval()
    assert torch.allclose(model(**ids).last_hidden_state, model(**ids).last_hidden_state)
