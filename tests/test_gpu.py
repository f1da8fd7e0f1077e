"""CUDA tests (`pytest -m gpu`): they skip without a CUDA device. benchmarks/gpu_check.py runs them
on a lent GPU machine (docs/gpu.md); `make test` deselects them."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from l2v_core import POOLING_MODES, Encoder, EncoderSettings, probe_is_bidirectional, set_attention_mode
from l2v_core.testing import tiny_model_and_tokenizer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TEXTS = [
    "The ACE2 receptor is expressed in the epithelial cells of the lung.",
    "hi",
    "Vitamin D supplementation did not reduce the incidence of cancer in older adults. " * 4,
    "Microglia shape synaptic connectivity.",
]


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_bidirectional_probe_in_bf16_on_cuda(family):
    model, _ = tiny_model_and_tokenizer(family)
    model = model.to("cuda", torch.bfloat16)
    set_attention_mode(model, bidirectional=True)
    assert probe_is_bidirectional(model)
    set_attention_mode(model, bidirectional=False)
    assert not probe_is_bidirectional(model)


@pytest.mark.parametrize("pooling", POOLING_MODES)
def test_encoder_bf16_on_cuda_matches_float32_on_cpu(pooling):
    model, tokenizer = tiny_model_and_tokenizer("llama")
    settings = EncoderSettings(pooling=pooling)
    expected = Encoder(model, tokenizer, settings).encode(TEXTS)
    on_cuda = Encoder(copy.deepcopy(model).to("cuda", torch.bfloat16), tokenizer, settings)
    for packed in (False, True):
        got = on_cuda.encode(TEXTS, packed=packed)
        assert float((expected * got).sum(1).min()) >= 0.999, packed


@pytest.mark.parametrize("implementation", ["sdpa", "flex_attention"])
def test_packed_matches_padded_on_cuda(implementation):
    model, tokenizer = tiny_model_and_tokenizer("llama", attn_implementation=implementation)
    encoder = Encoder(model.to("cuda", torch.bfloat16), tokenizer, EncoderSettings())
    padded = encoder.encode(TEXTS)
    packed = encoder.encode(TEXTS, packed=True)
    assert float((padded * packed).sum(1).min()) >= 0.999
    other = encoder.encode([TEXTS[0], TEXTS[3]], packed=True)
    assert np.abs(other[0] - packed[0]).max() < 0.01  # TEXTS[0] does not see its row neighbours


def test_lora_mntp_step_on_cuda_has_a_finite_loss():
    from l2v_core import enable_bidirectional
    from l2v_core.lora import apply_lora
    from l2v_core.mntp import MNTPObjective, mask_tokens

    model, tokenizer = tiny_model_and_tokenizer("llama", with_lm_head=True)
    model = model.to("cuda", torch.bfloat16)
    enable_bidirectional(model)
    apply_lora(model.base_model)
    model.train()
    ids = torch.randint(len(tokenizer), (4, 32))
    masked, labels = mask_tokens(ids, None, mask_token_id=tokenizer.eos_token_id, vocab_size=len(tokenizer),
                                 probability=0.3, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = MNTPObjective(model)(masked.cuda(), torch.ones_like(ids).cuda(), labels.cuda())
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
