"""Tiny random models and an offline tokenizer, for tests, benchmarks and smoke checks.

Everything here is built from a config in memory: nothing is downloaded. A tiny model has
hidden size 64 and 2 layers; its tokenizer is a byte-level BPE trained on a few built-in
sentences, with an EOS token used for padding and no BOS (like the default SmolLM2).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import transformers
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedTokenizerFast

_CORPUS = [
    "A cat sits on the mat. The dog sleeps in the sun.",
    "Ray Data streams blocks of rows through actors on many nodes.",
    "Vectors are normalized so that inner product equals cosine similarity.",
    "The quick brown fox jumps over the lazy dog; 0123456789.",
    "Bidirectional attention lets every token see every other token.",
    "Masked next token prediction reuses the language model head.",
    "Unicode: caf\u00e9, na\u00efve, \u00fcber, \u6f22\u5b57, \U0001f600.",
] * 20

EOS = "<|endoftext|>"

# Per-family config classes and the arguments that keep them tiny. Families whose config
# needs extra fields (sliding windows, head_dim) get them here so one builder serves all.
_FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": 4}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 16}),
    "gemma": ("GemmaConfig", {"head_dim": 16}),
    "gemma2": ("Gemma2Config", {"head_dim": 16, "sliding_window": 4}),
    "gemma3": ("Gemma3TextConfig", {"head_dim": 16, "sliding_window": 4}),
    "phi3": ("Phi3Config", {}),
    "olmo2": ("Olmo2Config", {}),
}
TINY_FAMILIES = tuple(_FAMILIES)


@functools.lru_cache(maxsize=1)
def _trained_tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (vocab ~500) with offsets, EOS as padding and no BOS."""
    from tokenizers import Tokenizer

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json()),
        eos_token=EOS,
        pad_token=EOS,
    )
    tok.padding_side = "left"
    return tok


def tiny_config(family: str = "llama", **overrides):
    """A 2-layer, 64-wide config of `family` (one of TINY_FAMILIES)."""
    if family not in _FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {', '.join(TINY_FAMILIES)}")
    cls_name, extra = _FAMILIES[family]
    tok = tiny_tokenizer()
    kwargs = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    kwargs.update(extra)
    kwargs.update(overrides)
    return getattr(transformers, cls_name)(**kwargs)


def tiny_model_and_tokenizer(
    family: str = "llama", *, with_lm_head: bool = False, attn_implementation: str = "sdpa", seed: int = 0, **overrides
):
    """A random tiny model of `family` and the tiny tokenizer, in float32 on the CPU, in eval mode."""
    config = tiny_config(family, **overrides)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    auto = AutoModelForCausalLM if with_lm_head else AutoModel
    model = auto.from_config(config, attn_implementation=attn_implementation).eval()
    return model, tiny_tokenizer()


def save_tiny_encoder(path: str | Path, family: str = "llama", *, pooling: str = "mean", seed: int = 0) -> Path:
    """Write a tiny random exported-encoder folder (safetensors + tokenizer + l2v_config.json)."""
    from .encoder import Encoder
    from .settings import EncoderSettings

    model, tokenizer = tiny_model_and_tokenizer(family, seed=seed)
    settings = EncoderSettings(pooling=pooling, max_length=128, bidirectional=True, base_model=f"tiny-random-{family}")
    encoder = Encoder(model, tokenizer, settings)
    encoder.save(path)
    return Path(path)
