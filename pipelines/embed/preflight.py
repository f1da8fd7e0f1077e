"""Checks a run makes on the driver before it takes the lock or starts Ray: each fails within
seconds, with a message saying how to fix it, instead of deep inside a Ray task."""

from __future__ import annotations

from pathlib import Path

from .config import EmbedConfig


def check_room_for_text(cfg: EmbedConfig) -> None:
    """The instruction (the config's, else the encoder's 'document' one) plus the special tokens
    must leave at least one token of --max-length for the text itself. Loads the tokenizer only
    (small, whatever the corpus); the default model without overrides always has room."""
    if cfg.model in (None, "", "default") and cfg.max_length is None and cfg.instruction is None:
        return  # no instruction and 512 tokens
    from l2v_core import CONFIG_FILE, EncoderSettings, load_tokenizer, resolve_model_path, tokenize_texts

    path = resolve_model_path(cfg.model)
    settings = EncoderSettings.load(path) if (Path(path) / CONFIG_FILE).is_file() else EncoderSettings()
    max_length = cfg.max_length or settings.max_length
    instruction = cfg.instruction if cfg.instruction is not None else settings.instructions.get("document")
    tokenizer = load_tokenizer(path)
    try:
        tokenize_texts(tokenizer, ["x"], instruction, max_length)
    except ValueError:
        used = len(tokenizer(f"{(instruction or '').strip()} ", add_special_tokens=True)["input_ids"])
        raise ValueError(
            f"--max-length {max_length} leaves no room for the text: the instruction {instruction!r} and the special "
            f"tokens already take {used} tokens; raise --max-length or shorten --instruction "
            f"(--instruction '' for none)"
        ) from None
