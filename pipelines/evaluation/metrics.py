"""Spearman correlation and nDCG@k, written out so they can be checked by hand."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import spearmanr


def spearman(predicted, gold) -> float:
    return float(spearmanr(np.asarray(predicted), np.asarray(gold)).statistic)


def ndcg_at_k(ranked: dict[str, list[str]], qrels: dict[str, dict[str, int]], k: int = 10) -> float:
    """Mean nDCG@k over the queries of `qrels` (a query with no ranking scores 0).

    ranked: query id -> doc ids, best first. Gain = relevance, discount 1/log2(rank + 1) (as
    pytrec_eval / BEIR)."""
    scores = []
    for qid, relevant in qrels.items():
        docs = ranked.get(qid, [])[:k]
        dcg = sum(relevant.get(d, 0) / math.log2(i + 2) for i, d in enumerate(docs))
        ideal = sorted(relevant.values(), reverse=True)[:k]
        idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
        scores.append(dcg / idcg if idcg > 0 else 0.0)
    return float(np.mean(scores)) if scores else 0.0
