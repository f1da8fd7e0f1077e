"""Switch a decoder-only transformers 5.x model between causal and bidirectional attention.

One generic mechanism, no per-architecture subclasses:
1. `config.is_causal = False` makes transformers' masking utilities build a bidirectional mask
   (padding still masked) instead of a causal one, for full and sliding-window layers alike.
2. Every attention module's own `is_causal` flag is cleared too. When no padding is present the
   mask utilities may return `None`, and SDPA / flash-attention then fall back to the module's
   flag: left at True, a batch of one unpadded text would silently run causal (llm2vec issue #74).
3. A probe proves the result: with bidirectional attention, changing the last token must change
   the first token's hidden state (and must not, when causal). A model that fails the probe
   raises `UnsupportedArchitectureError`; it is never returned silently causal.
"""

from __future__ import annotations

import torch

# Families tested in tests/test_core_bidirectional.py (transformers `model_type`). Others are
# accepted when the probe proves the switch worked.
TESTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2")

_PROBE_LENGTH = 3  # short enough to stay inside any sliding window


class UnsupportedArchitectureError(ValueError):
    """The model's attention could not be switched (or proven switched)."""


def set_attention_mode(model: torch.nn.Module, *, bidirectional: bool, verify: bool = True) -> torch.nn.Module:
    """Make `model` (a transformers decoder, with or without LM head, peft-wrapped or not)
    bidirectional or causal, in place. With `verify`, a probe forward pass checks the result."""
    configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "to_dict")}
    if not configs:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} has no transformers config; pass a transformers model"
        )
    for config in configs.values():
        config.is_causal = not bidirectional
        if hasattr(config, "use_bidirectional_attention"):  # Gemma 3 has its own switch
            config.use_bidirectional_attention = bidirectional
    for module in model.modules():
        if isinstance(getattr(module, "is_causal", None), bool):
            module.is_causal = not bidirectional
    if verify:
        measured = probe_is_bidirectional(model)
        if measured != bidirectional:
            model_type = getattr(next(iter(configs.values())), "model_type", "?")
            raise UnsupportedArchitectureError(
                f"could not make {type(model).__name__} (model_type={model_type!r}) "
                f"{'bidirectional' if bidirectional else 'causal'}: the probe still sees "
                f"{'causal' if not measured else 'bidirectional'} attention. Tested families: "
                f"{', '.join(TESTED_MODEL_TYPES)}."
            )
    return model


def enable_bidirectional(model: torch.nn.Module, *, verify: bool = True) -> torch.nn.Module:
    return set_attention_mode(model, bidirectional=True, verify=verify)


def disable_bidirectional(model: torch.nn.Module, *, verify: bool = True) -> torch.nn.Module:
    return set_attention_mode(model, bidirectional=False, verify=verify)


@torch.no_grad()
def probe_is_bidirectional(model: torch.nn.Module) -> bool:
    """True if the first position's hidden state depends on the last token.

    Runs one unpadded batch (a sequence and a copy with its last token changed), both with an
    all-ones attention mask and with none: the cases where transformers may skip building a mask
    and fall back to a kernel's causal flag. Dropout is off during the probe.
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        vocab = model.get_input_embeddings().num_embeddings
        ids = torch.tensor([[vocab // 3, vocab // 2, vocab // 5][:_PROBE_LENGTH]] * 2, device=device)
        ids[1, -1] = (ids[1, -1] + 7) % vocab
        sees_future = []
        for mask in (torch.ones_like(ids), None):
            first = _first_hidden(model, ids, mask)
            sees_future.append(not torch.allclose(first[0], first[1], rtol=0, atol=1e-6))
    finally:
        model.train(was_training)
    if sees_future[0] != sees_future[1]:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} is bidirectional with an explicit mask but not without one "
            f"(or the reverse): its attention ignores the switch in some code path"
        )
    return sees_future[0]


def _first_hidden(model, input_ids, attention_mask) -> torch.Tensor:
    """(b, s) ids -> (b, d) last-layer states at position 0."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
    return out.hidden_states[-1][:, 0].float()
