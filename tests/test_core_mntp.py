"""MNTP masking rule and the shifted loss, on a tiny random Llama."""

import torch
from torch import nn

from l2v_core.mntp import IGNORE_INDEX, MNTPObjective, mask_tokens, mntp_loss, resolve_mask_token_id
from l2v_core.testing import tiny_model_and_tokenizer, tiny_tokenizer


def _mask(ids, attn, p=0.5, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return mask_tokens(ids, attn, mask_token_id=7, vocab_size=400, probability=p, generator=g, **kw)


def test_mask_token_policy_blank_when_tokenizer_has_none():
    tok = tiny_tokenizer()
    assert tok.mask_token_id is None
    assert resolve_mask_token_id(tok) == tok.convert_tokens_to_ids("_")
    assert resolve_mask_token_id(tok, tok.eos_token) == tok.eos_token_id


def test_mask_token_policy_refuses_a_string_that_is_not_one_token():
    tok = tiny_tokenizer()
    try:
        resolve_mask_token_id(tok, "not-a-single-token-at-all")
    except ValueError as err:
        assert "eos_token" in str(err)
    else:
        raise AssertionError("expected a ValueError")


def test_80_10_10_rule_at_the_chosen_probability():
    ids = torch.randint(10, 400, (64, 256), generator=torch.Generator().manual_seed(1))
    ids[ids == 7] = 8
    masked, labels = _mask(ids, None, p=0.3)
    chosen = labels != IGNORE_INDEX
    eligible = ids.numel() - ids.shape[0]  # position 0 is never a target
    assert abs(chosen.sum().item() / eligible - 0.3) < 0.02
    assert torch.equal(labels[chosen], ids[chosen])
    as_mask = (masked == 7) & chosen
    unchanged = (masked == ids) & chosen
    assert abs(as_mask.sum().item() / chosen.sum().item() - 0.8) < 0.02
    # unchanged = the 10% kept + the random draws that happen to hit the original (rare)
    assert abs(unchanged.sum().item() / chosen.sum().item() - 0.1) < 0.02
    assert torch.equal(masked[~chosen], ids[~chosen])


def test_never_masks_special_padding_or_position_zero_or_after_padding():
    ids = torch.full((4, 12), 50)
    ids[:, 5] = 3  # a special token (e.g. EOS inside a packed block)
    attn = torch.ones_like(ids)
    attn[0, :4] = 0  # left padding: first real token at 4 has padding on its left
    attn[1, 9:] = 0  # right padding
    masked, labels = _mask(ids, attn, p=1.0, special_ids=[3])
    targets = labels != IGNORE_INDEX
    assert not targets[:, 0].any()
    assert not targets[:, 5].any() and (masked[:, 5] == 3).all()
    assert not targets[0, :5].any() and targets[0, 6:].all()
    assert not targets[1, 9:].any() and targets[1, 1:5].all()


def test_loss_uses_the_shift_and_runs_the_head_only_at_targets():
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8)
    head = nn.Linear(8, 11, bias=False)
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, 2] = 4
    labels[1, 4] = 9
    seen_rows = []
    head.register_forward_hook(lambda m, inp, out: seen_rows.append(inp[0].shape[0]))
    loss = mntp_loss(hidden, labels, head)
    expected = nn.functional.cross_entropy(head(torch.stack([hidden[0, 1], hidden[1, 3]])), torch.tensor([4, 9]))
    assert torch.allclose(loss, expected)
    assert seen_rows[0] == 2  # two targets, not b * s rows


def test_loss_without_targets_is_zero_and_differentiable():
    hidden = torch.randn(1, 4, 8, requires_grad=True)
    loss = mntp_loss(hidden, torch.full((1, 4), IGNORE_INDEX), nn.Linear(8, 3))
    loss.backward()
    assert loss.item() == 0.0 and hidden.grad is not None


def test_objective_on_a_tiny_causal_lm_trains():
    model, tok = tiny_model_and_tokenizer("llama", with_lm_head=True)
    model.train()
    batch = tok(["A cat sits on the mat. The dog sleeps in the sun."] * 4, return_tensors="pt")
    objective = MNTPObjective(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for step in range(6):
        ids, labels = mask_tokens(
            batch["input_ids"], batch["attention_mask"], mask_token_id=resolve_mask_token_id(tok),
            vocab_size=len(tok), probability=0.3, special_ids=tok.all_special_ids,
            generator=torch.Generator().manual_seed(step % 2),
        )
        loss = objective(ids, batch["attention_mask"], labels)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
