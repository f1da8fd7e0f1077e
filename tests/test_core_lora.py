"""LoRA apply / merge / save / load with peft on tiny random models."""

import pytest
import torch

from l2v_core.lora import (
    apply_lora,
    count_trainable,
    find_target_modules,
    load_adapter,
    load_lora_state_dict,
    lora_state_dict,
    merge_lora,
    save_adapter,
)
from l2v_core.testing import tiny_model_and_tokenizer


def _ids(tok):
    return tok(["Vectors are normalized so that inner product equals cosine similarity."], return_tensors="pt")


def test_reference_shape_on_the_body_only_lm_head_frozen():
    model, _ = tiny_model_and_tokenizer("llama", with_lm_head=True)
    peft_model = apply_lora(model, r=16, alpha=32, dropout=0.05)
    cfg = peft_model.peft_config["default"]
    assert cfg.r == 16 and cfg.lora_alpha == 32 and cfg.lora_dropout == 0.05
    assert set(cfg.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("lm_head" in n or "embed" in n for n in trainable)
    assert 0 < count_trainable(peft_model)[0] < count_trainable(peft_model)[1]


def test_fused_projection_family_gets_its_own_targets():
    model, _ = tiny_model_and_tokenizer("phi3")
    assert set(find_target_modules(model)) >= {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}


def test_merge_gives_the_same_outputs_as_the_adapter(tmp_path):
    model, tok = tiny_model_and_tokenizer("llama")
    peft_model = apply_lora(model, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():  # LoRA B starts at zero: give it weights so the merge has an effect
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(**_ids(tok)).last_hidden_state
    save_adapter(peft_model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    merged = merge_lora(peft_model)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        assert torch.allclose(merged(**_ids(tok)).last_hidden_state, adapted, atol=1e-5)

    # the saved adapter on a fresh copy of the base reproduces the same outputs
    base, _ = tiny_model_and_tokenizer("llama")
    reloaded = load_adapter(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**_ids(tok)).last_hidden_state, adapted, atol=1e-5)


def test_adapter_state_dict_round_trip():
    model, _ = tiny_model_and_tokenizer("llama")
    a = apply_lora(model, r=4, alpha=8)
    state = {k: torch.randn_like(v) for k, v in lora_state_dict(a).items()}
    other, _ = tiny_model_and_tokenizer("llama")
    b = apply_lora(other, r=4, alpha=8)
    load_lora_state_dict(b, state)
    for k, v in lora_state_dict(b).items():
        assert torch.equal(v, state[k])


def test_top_layers_adapts_only_the_last_layers_and_backward_stops_there():
    model, tok = tiny_model_and_tokenizer("llama")  # 2 layers
    peft_model = apply_lora(model, r=4, alpha=8, dropout=0.0, top_layers=1)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(".layers.1." in n for n in trainable)
    hidden = {}
    peft_model.base_model.model.layers[0].register_forward_hook(lambda m, i, o: hidden.update(first=o))
    peft_model(**_ids(tok)).last_hidden_state.sum().backward()
    first = hidden["first"][0] if isinstance(hidden["first"], tuple) else hidden["first"]
    assert not first.requires_grad  # no graph below the adapted layer: its backward is never computed


def test_top_layers_out_of_range_is_a_clear_error():
    model, _ = tiny_model_and_tokenizer("llama")
    with pytest.raises(ValueError, match="2 decoder layers"):
        apply_lora(model, top_layers=3)
