"""Contrastive losses: unsupervised SimCSE (scale 20) and supervised with hard negatives (scale 50).

Both are cross-entropy over cosine similarities times a scale (scale = 1 / temperature), with the
other rows of the batch as negatives. Across workers, pass `gather_fn`: it must return the
concatenation, in rank order, of every worker's tensor, with gradient flowing back to each
worker's own rows (e.g. `torch.distributed.nn.functional.all_gather` + `torch.cat`). Every worker
then computes the loss of the global batch, which equals one worker's loss on the combined batch.

Gradient bookkeeping with gather + DDP: every rank holds the same global loss L; the all-gather's
backward sums the W identical contributions for each rank's rows (W x dL/d rows), and DDP's
average over W ranks divides it back, so the update is exactly d L / d theta.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

GatherFn = Callable[[torch.Tensor], torch.Tensor]

SIMCSE_SCALE = 20.0
SUPERVISED_SCALE = 50.0


def _cosine_logits(queries: torch.Tensor, candidates: torch.Tensor, scale: float) -> torch.Tensor:
    """queries: (n, d), candidates: (m, d) -> (n, m) float32 cosine similarity x scale."""
    q = F.normalize(queries.float(), dim=-1)
    c = F.normalize(candidates.float(), dim=-1)
    return q @ c.T * scale


def simcse_loss(
    view_a: torch.Tensor, view_b: torch.Tensor, *, scale: float = SIMCSE_SCALE, gather_fn: GatherFn | None = None
) -> torch.Tensor:
    """Row i of `view_a` must be most similar to row i of `view_b` among all rows of `view_b`.

    view_a, view_b: (b, d) two dropout views of the same b sentences. Returns a scalar.
    """
    if view_a.shape != view_b.shape:
        raise ValueError(f"the two views must have the same shape, got {tuple(view_a.shape)} and {tuple(view_b.shape)}")
    if gather_fn is not None:
        view_a, view_b = gather_fn(view_a), gather_fn(view_b)
    logits = _cosine_logits(view_a, view_b, scale)  # (B, B)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, labels)


NO_TEXT = 0  # the text key of a missing hard negative


def text_key(text: str) -> int:
    """A stable int64 key of a text (blake2b), never NO_TEXT: texts compared by key across workers
    (false-negative masking) without shipping strings through the gather."""
    key = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)
    return key if key != NO_TEXT else 1


def false_negatives(keys: torch.Tensor, with_negatives: bool = True) -> torch.Tensor:
    """Which candidates must not count as negatives for each query.

    keys: (B, 3) int64 text keys (`text_key`) of each row's [query, positive, hard negative], the
    negative NO_TEXT where the row has none. Candidates are the B positives, then (with
    `with_negatives`) the B hard negatives. Returns (B, B) or (B, 2B) bool, True = excluded:
    - a candidate whose text equals row i's positive (a duplicate of the answer is no negative);
    - the positive of another row with the same query text (a second right answer, e.g. two
      entailed hypotheses of one premise);
    - a missing hard negative (rows without one use in-batch negatives only).
    Row i's own positive (its target) is never excluded.
    """
    query, positive, negative = keys[:, 0], keys[:, 1], keys[:, 2]
    candidates = torch.cat([positive, negative]) if with_negatives else positive
    excluded = candidates.unsqueeze(0) == positive.unsqueeze(1)  # same text as my positive
    same_query = query.unsqueeze(0) == query.unsqueeze(1)  # (B, B): their positive answers my query too
    excluded[:, : len(positive)] |= same_query
    if with_negatives:
        excluded[:, len(positive):] |= (negative == NO_TEXT).unsqueeze(0)
    own = torch.arange(len(positive), device=keys.device)
    excluded[own, own] = False  # the target
    return excluded


def supervised_contrastive_loss(
    queries: torch.Tensor,
    positives: torch.Tensor,
    hard_negatives: torch.Tensor | None = None,
    *,
    scale: float = SUPERVISED_SCALE,
    gather_fn: GatherFn | None = None,
    keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Query i against every positive and every hard negative of the (global) batch; its own
    positive is the target.

    queries, positives, hard_negatives: (b, d). keys: optional (b, 3) int64 text keys of
    [query, positive, negative] (see `false_negatives`): with them, false negatives are masked
    out and rows whose negative key is NO_TEXT contribute no hard negative (their
    `hard_negatives` row is ignored, e.g. zeros). With `gather_fn` the keys are gathered too.
    Returns a scalar.
    """
    if queries.shape != positives.shape:
        raise ValueError(f"queries {tuple(queries.shape)} and positives {tuple(positives.shape)} must match")
    if hard_negatives is not None and hard_negatives.shape != queries.shape:
        raise ValueError(f"hard_negatives {tuple(hard_negatives.shape)} must match queries {tuple(queries.shape)}; "
                         f"fill rows without a negative with zeros and mark them NO_TEXT in `keys`")
    if keys is not None and keys.shape != (queries.shape[0], 3):
        raise ValueError(f"keys must be (b, 3) = [query, positive, negative] text keys, got {tuple(keys.shape)}")
    if gather_fn is not None:
        queries, positives = gather_fn(queries), gather_fn(positives)
        hard_negatives = gather_fn(hard_negatives) if hard_negatives is not None else None
        keys = gather_fn(keys) if keys is not None else None
    candidates = positives if hard_negatives is None else torch.cat([positives, hard_negatives], dim=0)
    logits = _cosine_logits(queries, candidates, scale)  # (B, B) or (B, 2B)
    if keys is not None:
        logits = logits.masked_fill(false_negatives(keys, hard_negatives is not None), torch.finfo(logits.dtype).min)
    labels = torch.arange(queries.shape[0], device=logits.device)
    return F.cross_entropy(logits, labels)


def set_attention_dropout(model: nn.Module, p: float) -> int:
    """Set the attention dropout of every attention layer (SimCSE's augmentation; 0.3 in LLM2Vec).

    transformers' attention modules read `self.attention_dropout` at each forward, and only in
    training mode. Returns how many modules were changed; raises when none has the attribute.
    """
    changed = 0
    for module in model.modules():
        if hasattr(module, "attention_dropout") and isinstance(module.attention_dropout, float | int):
            module.attention_dropout = float(p)
            changed += 1
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "attention_dropout"):
        config.attention_dropout = float(p)
    if changed == 0:
        raise ValueError(f"{type(model).__name__} has no attention module with an `attention_dropout` attribute")
    return changed


class PooledEmbedder(nn.Module):
    """forward(input_ids, attention_mask, pool_mask) -> (b, d) pooled embeddings.

    Wraps a decoder body (e.g. LlamaModel, peft-wrapped or not) so that DDP sees one forward call.
    Padding is excluded from pooling (the reference SimCSE collator averages padding and BOS too;
    we do not).
    """

    def __init__(self, body: nn.Module, pooling: str = "mean"):
        super().__init__()
        self.body = body
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
        from .pooling import pool

        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, pool_mask * attention_mask, self.pooling, attention_mask)
