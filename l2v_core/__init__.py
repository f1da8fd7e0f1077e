"""l2v_core: LLM2Vec in pure torch/transformers/peft. Never imports ray (usable anywhere)."""

from .batching import padded_positions, padding_share, plan_micro_batches
from .bidirectional import (
    TESTED_MODEL_TYPES,
    UnsupportedArchitectureError,
    disable_bidirectional,
    enable_bidirectional,
    probe_is_bidirectional,
    set_attention_mode,
)
from .chunking import Passage, check_chunking, split_document
from .default_model import DEFAULT_MODEL_NAME, default_model_dir
from .device import pick_device_and_dtype
from .encoder import Encoder
from .loading import backbone_of, load_model, load_tokenizer, resolve_model_path, weights_sha256
from .pooling import pool
from .settings import CONFIG_FILE, POOLING_MODES, EncoderSettings
from .tokenize import TokenizedBatch, check_texts, tokenize_texts

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_MODEL_NAME",
    "POOLING_MODES",
    "TESTED_MODEL_TYPES",
    "Encoder",
    "EncoderSettings",
    "Passage",
    "TokenizedBatch",
    "UnsupportedArchitectureError",
    "backbone_of",
    "check_chunking",
    "check_texts",
    "default_model_dir",
    "disable_bidirectional",
    "enable_bidirectional",
    "load_model",
    "load_tokenizer",
    "padded_positions",
    "padding_share",
    "pick_device_and_dtype",
    "plan_micro_batches",
    "pool",
    "probe_is_bidirectional",
    "resolve_model_path",
    "set_attention_mode",
    "split_document",
    "tokenize_texts",
    "weights_sha256",
]
