"""Export: fold the stage adapters into the base weights and write an encoder folder.

The folder is what `Encoder.from_pretrained(folder)` loads: safetensors weights, tokenizer and
`l2v_config.json` (pooling, max length, bidirectional, base model and its hash, stage history).
The adapters are also kept in peft format, for those who prefer them unmerged.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from l2v_core import Encoder, EncoderSettings, load_model
from l2v_core.loading import files_sha256, resolve_model_path

from .loop_tools import ADAPTER_DIR, STEP_LOG, _as_directory, merge_earlier_adapters

DEFAULT_INSTRUCTIONS = {
    "sts": "Retrieve semantically similar text:",
    "query": "Given a web search query, retrieve relevant passages that answer the query:",
}


def base_model_sha256(model_ref: str) -> str | None:
    folder = Path(resolve_model_path(model_ref))
    return files_sha256(folder) if folder.is_dir() and any(folder.glob("*.safetensors")) else None


def export_encoder(model_ref: str, checkpoints: list, out_dir: str | Path, *, pooling: str, max_length: int,
                   stages: list[dict], instructions: dict[str, str] | None = None) -> Path:
    """Base model + adapters of `checkpoints` (in order) -> encoder folder at `out_dir` (float32).
    `instructions` are added to (or replace) DEFAULT_INSTRUCTIONS in its l2v_config.json."""
    body, tokenizer = load_model(model_ref, with_lm_head=False, device="cpu", dtype="float32")
    body = merge_earlier_adapters(body, checkpoints)
    settings = EncoderSettings(
        pooling=pooling, max_length=max_length, bidirectional=True, instructions={**DEFAULT_INSTRUCTIONS, **(instructions or {})},
        base_model=str(model_ref), base_model_sha256=base_model_sha256(model_ref), stages=stages,
    )
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a stale weight shard must not survive beside the new ones
    return Encoder(body, tokenizer, settings).save(out_dir)


def keep_adapter_and_log(checkpoint, adapters_dir: Path, logs_dir: Path, stage: str) -> Path:
    """Copy a stage's final adapter (peft format) and its step log out of the run's storage.
    Returns the JSONL log path."""
    with _as_directory(checkpoint) as folder:
        dest = adapters_dir / stage
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(Path(folder) / ADAPTER_DIR, dest)
        logs_dir.mkdir(parents=True, exist_ok=True)
        log = logs_dir / f"{stage}.jsonl"
        shutil.copyfile(Path(folder) / STEP_LOG, log)
    return log
