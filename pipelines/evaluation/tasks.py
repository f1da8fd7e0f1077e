"""The two evaluation tasks over any `embed(texts, instruction) -> (n, d) float32` function."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from .data import Retrieval, StsPairs
from .metrics import ndcg_at_k, spearman

Embed = Callable[[list[str], "str | None"], np.ndarray]

# The instructions of the LLM2Vec evaluation (issue 3)
STS_INSTRUCTION = "Retrieve semantically similar text:"
SCIFACT_QUERY_INSTRUCTION = "Given a scientific claim, retrieve documents that support or refute the claim:"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def evaluate_stsb(embed: Embed, pairs: StsPairs, instruction: str | None = STS_INSTRUCTION) -> dict:
    """Spearman x 100 between gold scores and the cosine of the two sentences' embeddings."""
    start = time.perf_counter()
    a = _unit(embed(pairs.first, instruction))
    b = _unit(embed(pairs.second, instruction))
    cosine = (a * b).sum(axis=1)
    return {"spearman": round(100 * spearman(cosine, pairs.scores), 2), "pairs": len(pairs.scores),
            "seconds": round(time.perf_counter() - start, 1)}


def evaluate_scifact(embed: Embed, data: Retrieval, query_instruction: str | None = SCIFACT_QUERY_INSTRUCTION,
                     k: int = 10) -> dict:
    """nDCG@k x 100 of exact cosine search of the queries over the whole corpus."""
    start = time.perf_counter()
    docs = _unit(embed(data.docs, None))
    queries = _unit(embed(data.queries, query_instruction))
    scores = queries @ docs.T  # (q, n)
    top = np.argsort(-scores, axis=1)[:, :k]
    ranked = {qid: [data.doc_ids[j] for j in row] for qid, row in zip(data.query_ids, top)}
    qrels = {qid: data.qrels[qid] for qid in data.query_ids}
    return {"ndcg@10": round(100 * ndcg_at_k(ranked, qrels, k), 2), "queries": len(data.queries),
            "docs": len(data.docs), "seconds": round(time.perf_counter() - start, 1)}
