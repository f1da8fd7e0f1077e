"""Load a model and tokenizer by name or path, offline-friendly and safetensors-only."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .default_model import default_model_dir, is_default_model
from .device import pick_attn_implementation, pick_device_and_dtype

logger = logging.getLogger(__name__)


def resolve_model_path(name_or_path: str | os.PathLike | None) -> str:
    """`None` or "default" -> the cached default model folder; a local folder -> its absolute path;
    anything else is passed on as a Hugging Face model id (only cached ones work offline)."""
    if is_default_model(name_or_path):
        return str(default_model_dir())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path.resolve()} exists but has no config.json: not a model folder")
        return str(path.resolve())
    return str(name_or_path)


def _not_found(name_or_path, err: Exception) -> FileNotFoundError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    where = [f"a local folder at {Path(str(name_or_path)).expanduser().resolve()} (none there)"]
    hub_cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    where.append(f"the Hugging Face cache under {hub_cache}" + (" (HF_HUB_OFFLINE=1: no download)" if offline else ""))
    return FileNotFoundError(
        f"model {name_or_path!r} not found; looked in " + " and ".join(where)
        + ". Pass a local model folder, an exported encoder folder, or nothing for the default model."
        + f" ({type(err).__name__}: {err})"
    )


def load_tokenizer(name_or_path: str | os.PathLike | None, *, trust_remote_code: bool = False):
    path = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise _not_found(name_or_path, err) from err
    if tokenizer.pad_token is None:
        # Decoder tokenizers often have no pad token; the attention mask makes the choice harmless.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    with_lm_head: bool = False,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, object]:
    """Load (model, tokenizer). `with_lm_head=True` gives the causal-LM class (for MNTP), else the
    bare decoder body. bf16 + fast attention on CUDA, float32 + SDPA on CPU unless told otherwise.
    Weights load from safetensors only: pickle-based `.bin` files are refused."""
    path = resolve_model_path(name_or_path)
    device, dtype = pick_device_and_dtype(device, dtype)
    attn_implementation = attn_implementation or pick_attn_implementation(device)
    auto = AutoModelForCausalLM if with_lm_head else AutoModel
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    try:
        model = auto.from_pretrained(
            path,
            dtype=dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
        )
    except OSError as err:
        if Path(path).is_dir():
            raise OSError(
                f"could not load weights from {path}: {err}. l2v-ray loads safetensors only; convert "
                f"pickle checkpoints with `model.save_pretrained(dir, safe_serialization=True)`."
            ) from err
        raise _not_found(name_or_path, err) from err
    model.to(device).eval()
    logger.info("loaded %s (%s, %s, %s attention)", path, device, dtype, attn_implementation)
    return model, tokenizer


def backbone_of(model: PreTrainedModel) -> PreTrainedModel:
    """The decoder body of a causal LM (LlamaForCausalLM -> LlamaModel); a body stays itself."""
    return getattr(model, "base_model", model)


def weights_sha256(model: torch.nn.Module) -> str:
    """A digest of the state dict: names, shapes, dtypes and bytes in sorted name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def files_sha256(folder: str | os.PathLike, pattern: str = "*.safetensors") -> str:
    """A digest of a folder's weight files (dtype-independent of how they are later loaded)."""
    digest = hashlib.sha256()
    for file in sorted(Path(folder).glob(pattern)):
        digest.update(file.name.encode() + b"\n")
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()
