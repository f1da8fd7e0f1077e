"""Pick the device and dtype: bf16 on CUDA, float32 on CPU, unless the caller says otherwise."""

from __future__ import annotations

import torch

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPES))}") from None


def pick_device_and_dtype(
    device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> tuple[torch.device, torch.dtype]:
    """`None` picks CUDA when present. The dtype defaults to bf16 on CUDA (when supported), else float32."""
    device = (
        torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    chosen = parse_dtype(dtype)
    if chosen is None:
        use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        chosen = torch.bfloat16 if use_bf16 else torch.float32
    return device, chosen


def pick_attn_implementation(device: torch.device) -> str:
    """Fast attention where it exists: flash-attn 2 on CUDA when installed, else SDPA (which picks
    its own flash/memory-efficient kernels on CUDA)."""
    if device.type == "cuda":
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"
