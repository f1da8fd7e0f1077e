"""All-gather with gradient, for negatives that span the global batch (SimCSE across workers).

torch.distributed.nn's all_gather emulates reduce-scatter with all-to-all on backends without it;
ours all-reduces the (small) gradient of the gathered embeddings instead, which every backend
(gloo on CPU, NCCL on GPU) supports.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows, ctx.rank = tensor.shape[0], rank
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank's loss depends on every rank's rows: sum those contributions, keep ours.
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """(b, d) on each of W ranks -> (W*b, d), rank order; gradient flows to the local rows.
    Without an initialized process group (one worker) it returns `tensor` unchanged."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def mean_over_ranks(value: float, device: torch.device | str = "cpu") -> float:
    """The average of a Python float over ranks (for logging); `device` must suit the backend
    (CUDA for NCCL)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


def prepare_for_training(module: nn.Module, strategy: str = "ddp") -> nn.Module:
    """Move `module` to this worker's device and wrap it for data parallelism.

    - ddp: every worker holds the whole model; gradients are all-reduced (Ray's prepare_model).
    - fsdp: FSDP2 (`fully_shard`) shards each decoder layer's weights, then the rest, over the
      workers: for models whose weights do not fit one device. Works on GPUs (NCCL) and CPUs (gloo).
    With one worker there is nothing to shard and both are the plain module.
    """
    import ray.train.torch

    if strategy not in ("ddp", "fsdp"):
        raise ValueError(f"unknown strategy {strategy!r}; use ddp or fsdp")
    if strategy == "ddp" or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ray.train.torch.prepare_model(module)
    from torch.distributed.fsdp import fully_shard

    module.to(ray.train.torch.get_device())
    layers = [m for m in module.modules() if type(m).__name__ in _no_split_modules(module)]
    if not layers:
        raise ValueError(f"fsdp: found no decoder layers to shard in {type(module).__name__}; use strategy ddp")
    for layer in layers:
        fully_shard(layer)
    return fully_shard(module)


def _no_split_modules(module: nn.Module) -> set[str]:
    """Class names transformers marks as whole blocks (`_no_split_modules`, e.g. LlamaDecoderLayer)."""
    names: set[str] = set()
    for m in module.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return names


def deferred_grad_sync(module: nn.Module):
    """A context factory under which backward passes accumulate gradients without reducing them
    over the workers (DDP's `no_sync`, FSDP2's `set_requires_gradient_sync(False)`), for every
    micro-step but the last of a cached-gradient step; None for a plain module (one worker)."""
    if hasattr(module, "no_sync"):
        return module.no_sync
    if hasattr(module, "set_requires_gradient_sync"):
        @contextlib.contextmanager
        def no_sync():
            module.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                module.set_requires_gradient_sync(True)
        return no_sync
    return None
