"""The evaluation tasks: STS-B and SciFact over any `embed(texts, instruction) -> (n, d) float32`
function; SciFact's long-document check over an l2v `Encoder` (it splits documents by the
encoder's own tokens)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from l2v_core.chunking import check_chunking, split_document
from l2v_core.tokenize import TokenizedBatch, tokenize_texts

from .data import Retrieval, StsPairs
from .metrics import ndcg_at_k, spearman

if TYPE_CHECKING:
    from l2v_core import Encoder

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
    return {"ndcg@10": _ndcg(queries @ docs.T, data, k), "queries": len(data.queries),
            "docs": len(data.docs), "seconds": round(time.perf_counter() - start, 1)}


def evaluate_scifact_passages(encoder: Encoder, data: Retrieval, *, chunk_tokens: int = 64, overlap: int = 0,
                              query_instruction: str | None = SCIFACT_QUERY_INSTRUCTION, k: int = 10,
                              batch_tokens: int = 16384) -> dict:
    """Long documents: nDCG@k x 100 of SciFact with each document cut into passages of at most
    `chunk_tokens` tokens (`l2v_core.chunking`; a document scores its best passage, as grouped
    search does), against the same documents truncated at `chunk_tokens` tokens.

    Both sides embed the same "title text" with the same window, so the difference is what the
    truncated side never sees. Needs an l2v `Encoder` (the splitter counts its own tokens)."""
    start = time.perf_counter()
    tokenizer = encoder.tokenizer
    check_chunking(tokenizer, chunk_tokens=chunk_tokens, overlap=overlap, max_length=encoder.settings.max_length)
    queries = _unit(encoder.encode(data.queries, query_instruction, batch_tokens=batch_tokens))

    whole = tokenize_texts(tokenizer, data.docs, None, max_length=chunk_tokens)
    whole_scores = queries @ _unit(encoder.encode_tokenized(whole, batch_tokens=batch_tokens)).T

    passages = [split_document(tokenizer, doc, chunk_tokens=chunk_tokens, overlap=overlap) for doc in data.docs]
    flat = [p for doc in passages for p in doc]
    batch = TokenizedBatch(input_ids=[p.input_ids for p in flat], pool_mask=[p.pool_mask for p in flat],
                           n_tokens=[len(p.input_ids) for p in flat], truncated=[False] * len(flat))
    passage_scores = queries @ _unit(encoder.encode_tokenized(batch, batch_tokens=batch_tokens, show_progress=True)).T
    first = np.cumsum([0] + [len(doc) for doc in passages[:-1]])  # each document's first passage (all have one)
    doc_scores = np.maximum.reduceat(passage_scores, first, axis=1)  # (q, docs): the best passage
    return {"chunk_tokens": chunk_tokens, "overlap": overlap,
            "ndcg@10_passages": _ndcg(doc_scores, data, k), "ndcg@10_whole": _ndcg(whole_scores, data, k),
            "queries": len(data.queries), "docs": len(data.docs), "passages": len(flat),
            "docs_truncated": int(sum(whole.truncated)), "passage_tokens": int(sum(batch.n_tokens)),
            "seconds": round(time.perf_counter() - start, 1)}


def _ndcg(scores: np.ndarray, data: Retrieval, k: int) -> float:
    """nDCG@k x 100 of ranking each query's documents by `scores` (queries x documents)."""
    top = np.argsort(-scores, axis=1)[:, :k]
    ranked = {qid: [data.doc_ids[j] for j in row] for qid, row in zip(data.query_ids, top)}
    qrels = {qid: data.qrels[qid] for qid in data.query_ids}
    return round(100 * ndcg_at_k(ranked, qrels, k), 2)
