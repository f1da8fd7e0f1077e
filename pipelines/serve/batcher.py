"""Shared forward passes for concurrent requests.

Serve's @serve.batch hands the deployment a list of jobs (one per request, each already
tokenized). Jobs for the same encoder are merged into one TokenizedBatch and encoded with
`Encoder.encode_tokenized`, which sorts by length and cuts micro-batches by the token budget and
padding cap, exactly as the embed pipeline does; then each job gets its own rows back. Jobs of
another encoder (a version swapped in while they waited) are encoded with theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from l2v_core import TokenizedBatch


@dataclass(frozen=True)
class EncodeJob:
    encoder: object  # l2v_core.Encoder; the one of the version the request started on
    batch: TokenizedBatch


def merge(batches: list[TokenizedBatch]) -> TokenizedBatch:
    merged = TokenizedBatch()
    for b in batches:
        merged.input_ids.extend(b.input_ids)
        merged.pool_mask.extend(b.pool_mask)
        merged.n_tokens.extend(b.n_tokens)
        merged.truncated.extend(b.truncated)
    return merged


def encode_jobs(jobs: list[EncodeJob], batch_tokens: int, max_padding: float) -> list[np.ndarray]:
    """One normalized float32 array per job, in job order."""
    results: list[np.ndarray | None] = [None] * len(jobs)
    by_encoder: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        by_encoder.setdefault(id(job.encoder), []).append(i)
    for members in by_encoder.values():
        encoder = jobs[members[0]].encoder
        vectors = encoder.encode_tokenized(merge([jobs[i].batch for i in members]), batch_tokens=batch_tokens,
                                           max_padding=max_padding, normalize=True)
        start = 0
        for i in members:
            n = len(jobs[i].batch)
            results[i] = vectors[start:start + n]
            start += n
    return results
