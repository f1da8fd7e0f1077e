"""Export: fold the stage adapters into the base weights and write an encoder folder.

The folder is what `Encoder.from_pretrained(folder)` loads: safetensors weights, tokenizer and
`l2v_config.json` (pooling, max length, bidirectional, base model and its hash, stage history).
The adapters are also kept in peft format, for those who prefer them unmerged: portable (their
`base_model_name_or_path` is a model name or a path relative to the adapter folder, never an
absolute local path), each naming the body it belongs on, `task_type` FEATURE_EXTRACTION (they
adapt the bare decoder body, `AutoModel`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from l2v_core import Encoder, EncoderSettings, load_model
from l2v_core.loading import files_sha256, resolve_model_path
from l2v_core.model_card import public_model_name

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
        pooling=pooling, max_length=max_length, bidirectional=True,
        instructions={**DEFAULT_INSTRUCTIONS, **(instructions or {})},
        base_model=str(model_ref), base_model_sha256=base_model_sha256(model_ref), stages=stages,
    )
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a stale weight shard must not survive beside the new ones
    return Encoder(body, tokenizer, settings).save(out_dir)


def adapter_base(model_ref: str, adapters_dir: Path, previous_body: Path | None) -> str:
    """What an adapter belongs on: the base model's public name for the first stage; for a later
    stage the encoder folder of the stage before it (the base with the earlier adapters merged,
    which the export writes to OUTPUT/stages/<stage>/encoder), relative to the adapter's folder."""
    if previous_body is None:
        return public_model_name(model_ref)
    return Path(os.path.relpath(previous_body, adapters_dir / "_")).as_posix()


def keep_adapter_and_log(checkpoint, adapters_dir: Path, logs_dir: Path, stage: str, *,
                         base: str | None = None) -> Path:
    """Copy a stage's final adapter (peft format) and its step log out of the run's storage, the
    adapter made portable (`base`: see `adapter_base`). Returns the JSONL log path."""
    with _as_directory(checkpoint) as folder:
        dest = adapters_dir / stage
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(Path(folder) / ADAPTER_DIR, dest)
        make_adapter_portable(dest, base)
        logs_dir.mkdir(parents=True, exist_ok=True)
        log = logs_dir / f"{stage}.jsonl"
        shutil.copyfile(Path(folder) / STEP_LOG, log)
    return log


def make_adapter_portable(adapter_dir: Path, base: str | None) -> None:
    """Rewrite adapter_config.json: `base_model_name_or_path` = `base` (a name or a relative path;
    without one, the recorded path's folder name) and `task_type` FEATURE_EXTRACTION."""
    path = Path(adapter_dir) / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base or public_model_name(config.get("base_model_name_or_path"))
    config["task_type"] = "FEATURE_EXTRACTION"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_adapters_readme(adapters_dir: Path, stages: list[tuple[str, str]]) -> Path:
    """adapters/README.md: the order to apply the adapters in and the body each belongs on."""
    rows = "\n".join(f"| {i + 1} | `{name}/` | `{base}` |" for i, (name, base) in enumerate(stages))
    name, base = stages[-1]
    base_expr = f'adapter / "{base}"' if base.startswith(".") else f'"{base}"'
    text = f"""# LoRA adapters (peft), one per training stage

| order | adapter | belongs on (`base_model_name_or_path`) |
|---|---|---|
{rows}

Each adapter adapts the bare decoder body (`transformers.AutoModel`, `task_type` FEATURE_EXTRACTION).
A relative base is relative to the adapter's own folder: the encoder folder of the stage before,
which holds the base model with the earlier adapters merged (so the last adapter alone, on it,
gives the final encoder's weights). A model name is the base model's Hugging Face id (or, for a
local folder, its folder name: the full path at training time is `base_model` in the encoder's
`l2v_config.json`).

```python
from pathlib import Path

from peft import PeftModel
from transformers import AutoModel

from l2v_core import enable_bidirectional

adapter = Path("adapters/{name}")
body = AutoModel.from_pretrained({base_expr})
body = enable_bidirectional(PeftModel.from_pretrained(body, str(adapter)).merge_and_unload())
```
"""
    adapters_dir.mkdir(parents=True, exist_ok=True)
    path = adapters_dir / "README.md"
    path.write_text(text)
    return path
