"""All-gather with gradient, for negatives that span the global batch (SimCSE across workers).

torch.distributed.nn's all_gather emulates reduce-scatter with all-to-all on backends without it;
ours all-reduces the (small) gradient of the gathered embeddings instead, which every backend
(gloo on CPU, NCCL on GPU) supports.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


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
