"""The bidirectional switch, proven on a tiny random model of every tested family."""

import pytest
import torch
import transformers

from l2v_core import UnsupportedArchitectureError, disable_bidirectional, enable_bidirectional, probe_is_bidirectional
from l2v_core.testing import TINY_FAMILIES, tiny_model_and_tokenizer

CASES = [(f, a) for f in TINY_FAMILIES for a in ("eager", "sdpa") if not (f == "gemma2" and a == "sdpa")]


def _hidden(model, ids, mask=None):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


@pytest.mark.parametrize("family,attn", CASES)
def test_last_token_reaches_first_token_only_when_bidirectional(family, attn):
    model, _ = tiny_model_and_tokenizer(family, attn_implementation=attn)
    ids = torch.tensor([[11, 42, 97, 150, 201]])  # batch of one, no padding: the silent-causal trap
    changed = ids.clone()
    changed[0, -1] = 300

    def first_changes():
        return not torch.allclose(_hidden(model, ids)[0, 0], _hidden(model, changed)[0, 0], atol=1e-6)

    assert not first_changes(), "a fresh decoder should be causal"
    enable_bidirectional(model)
    assert first_changes(), "bidirectional: the first token must see the last"
    assert probe_is_bidirectional(model)
    disable_bidirectional(model)
    assert not first_changes(), "switched back, the model must be causal again"


@pytest.mark.parametrize("family,attn", CASES)
@pytest.mark.parametrize("bidirectional", [True, False])
def test_padding_never_changes_real_tokens(family, attn, bidirectional):
    model, tokenizer = tiny_model_and_tokenizer(family, attn_implementation=attn)
    (enable_bidirectional if bidirectional else disable_bidirectional)(model)
    short = torch.tensor([[11, 42, 97]])
    alone = _hidden(model, short, torch.ones_like(short))[0]
    pad = tokenizer.pad_token_id
    padded = torch.tensor([[11, 42, 97, pad, pad], [5, 6, 7, 8, 9]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    in_batch = _hidden(model, padded, mask)[0, :3]
    torch.testing.assert_close(in_batch, alone, atol=1e-5, rtol=1e-4)


def test_a_model_that_cannot_be_made_bidirectional_raises_naming_the_supported_families():
    config = transformers.MambaConfig(hidden_size=32, num_hidden_layers=1, vocab_size=100, state_size=4)
    model = transformers.AutoModel.from_config(config)
    with pytest.raises(UnsupportedArchitectureError, match="llama.*mistral.*qwen2"):
        enable_bidirectional(model)


def test_not_a_transformers_model_raises():
    with pytest.raises(UnsupportedArchitectureError, match="no transformers config"):
        enable_bidirectional(torch.nn.Linear(2, 2))


def test_probe_restores_training_mode():
    model, _ = tiny_model_and_tokenizer("llama")
    model.train()
    enable_bidirectional(model)
    assert model.training
