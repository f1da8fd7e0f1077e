"""Cached-gradient contrastive training (GradCache, Gao et al. 2021): a large batch on small memory.

A contrastive loss couples every row of the batch, so it cannot be split into independent
micro-batches. GradCache splits the work instead:

1. embed the whole batch chunk by chunk **without a graph** (memory: one chunk's activations);
2. compute the loss on those embeddings and its gradient with respect to them (cheap: (n, d));
3. re-run each chunk **with** a graph and backpropagate the cached embedding gradients into it.

The parameter gradients equal those of the plain computation (loss(embed(all)).backward())
to float tolerance, at the cost of one extra forward pass. Dropout is replayed: each chunk's
random state is saved before step 1 and restored for step 3, so both passes draw the same masks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

EmbedFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
LossFn = Callable[[torch.Tensor], torch.Tensor]


class _RandomState:
    """The CPU (and current CUDA device's) generator state, to replay a chunk's dropout draws."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def replay(self):
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):  # the global streams continue as before afterwards
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def _chunks(input_ids: torch.Tensor, attention_mask: torch.Tensor, pool_mask: torch.Tensor, size: int):
    """Row chunks, each trimmed to its longest row (right padding: trailing columns are padding)."""
    for start in range(0, input_ids.shape[0], size):
        rows = slice(start, start + size)
        width = int(attention_mask[rows].sum(1).max())
        yield rows, input_ids[rows, :width], attention_mask[rows, :width], pool_mask[rows, :width]


def cached_backward(
    embed: EmbedFn,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pool_mask: torch.Tensor,
    loss_fn: LossFn,
    *,
    chunk_size: int,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> torch.Tensor:
    """Backpropagate `loss_fn(embed(batch))` into `embed`'s parameters, `chunk_size` rows at a time.

    input_ids, attention_mask, pool_mask: (n, s), right-padded. embed(ids, attention, pool) ->
    (rows, d). loss_fn((n, d) embeddings) -> scalar; it may gather across workers with gradient
    (the gather's backward hands back this worker's rows' gradients). no_sync: the wrapper's
    context that skips gradient synchronisation (DDP's `no_sync`), used for every chunk but the
    last so the gradients are reduced once. Returns the loss (detached).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    device = input_ids.device
    parts, states = [], []
    with torch.no_grad():  # 1. embeddings without a graph
        for _, ids, attention, pool in _chunks(input_ids, attention_mask, pool_mask, chunk_size):
            states.append(_RandomState(device))
            parts.append(embed(ids, attention, pool))
    cached = torch.cat(parts).detach().requires_grad_()  # (n, d)
    loss = loss_fn(cached)  # 2. the loss and d loss / d embeddings
    loss.backward()
    grads = cached.grad

    chunks = list(_chunks(input_ids, attention_mask, pool_mask, chunk_size))
    for index, ((rows, ids, attention, pool), state) in enumerate(zip(chunks, states)):
        last = index == len(chunks) - 1
        sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with sync, state.replay():  # 3. the same chunk with a graph, the same dropout draws
            embeddings = embed(ids, attention, pool)
            embeddings.backward(grads[rows].to(embeddings.dtype))
    return loss.detach()
