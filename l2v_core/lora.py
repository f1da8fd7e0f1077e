"""LoRA apply / merge / save / load with peft, in the LLM2Vec shape.

Reference shape: r=16, alpha=32, dropout 0.05 on the attention and MLP projections of the decoder
body (q, k, v, o, gate, up, down). The LM head and the embeddings are never targets, so they stay
frozen. Families that fuse projections (Phi-3: qkv_proj, gate_up_proj) get their fused names.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FUSED_TARGETS = ("qkv_proj", "gate_up_proj")


def find_target_modules(model: nn.Module, wanted: tuple[str, ...] | list[str] | None = None) -> list[str]:
    """The module-name suffixes among `wanted` (default: the LLM2Vec set plus fused names) that
    exist as Linear layers in `model`. Raises when none does."""
    wanted = tuple(wanted) if wanted else DEFAULT_TARGETS + FUSED_TARGETS
    present = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    found = [t for t in wanted if t in present]
    if not found:
        raise ValueError(
            f"none of the LoRA targets {list(wanted)} is a Linear layer of {type(model).__name__}; "
            f"its Linear layers are named {sorted(present)}"
        )
    return found


def decoder_layers(model: nn.Module) -> tuple[str, int]:
    """(attribute name, count) of the decoder's layer list: the largest ModuleList of blocks
    (`layers` in Llama, Mistral, Qwen, Gemma, Phi-3, OLMo 2). Raises when there is none."""
    lists = [(name.rsplit(".", 1)[-1], len(m)) for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no ModuleList of decoder layers")
    return max(lists, key=lambda item: item[1])


def apply_lora(
    model: nn.Module,
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: list[str] | None = None,
    top_layers: int | None = None,
):
    """Wrap `model` in a fresh peft LoRA; only the LoRA matrices are trainable.

    Works on a causal LM (for MNTP) or a bare decoder body (for SimCSE). `top_layers=N` puts
    the LoRA on the last N decoder layers only: autograd then never goes below them, so a
    training step costs a forward pass plus the backward pass of N layers (about 3x cheaper
    with 10 of 30 layers on a CPU). `None` adapts every layer (the reference recipe).
    Returns the `PeftModel`.
    """
    from peft import LoraConfig, get_peft_model

    layer_kwargs = {}
    if top_layers is not None:
        pattern, count = decoder_layers(model)
        if not 1 <= top_layers <= count:
            raise ValueError(
                f"top_layers={top_layers} but the model has {count} decoder layers; use 1..{count} or null"
            )
        layer_kwargs = {"layers_to_transform": list(range(count - top_layers, count)), "layers_pattern": pattern}
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=find_target_modules(model, target_modules),
        bias="none",
        **layer_kwargs,
    )
    return get_peft_model(model, config)


def merge_lora(peft_model) -> nn.Module:
    """Fold the LoRA weights into the base weights; returns the plain (unwrapped) model."""
    return peft_model.merge_and_unload()


def save_adapter(peft_model, path: str | Path, state_dict: dict | None = None) -> Path:
    """Write the adapter in peft format (adapter_config.json + adapter_model.safetensors).
    `state_dict`: the model's state dict (LoRA tensors at least) when its own parameters are
    sharded: the caller gathers the full tensors, peft picks the adapter's."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(path), state_dict=state_dict)
    return path


def load_adapter(model: nn.Module, path: str | Path, *, trainable: bool = False):
    """Wrap `model` with the adapter saved at `path` (by `save_adapter`); returns the `PeftModel`."""
    from peft import PeftModel

    if not (Path(path) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{path} has no adapter_config.json: not a peft adapter folder")
    return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)


def lora_state_dict(peft_model) -> dict:
    """Only the adapter tensors (what a training checkpoint needs)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(peft_model)


def load_lora_state_dict(peft_model, state: dict) -> None:
    """Inverse of `lora_state_dict`; raises when an adapter tensor is missing."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(peft_model, state)
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing:
        raise ValueError(f"the checkpoint lacks adapter tensors: {missing[:5]}...")


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
