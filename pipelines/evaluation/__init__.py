"""Evaluation of an encoder: STS-B (Spearman of cosine) and SciFact retrieval (nDCG@10).

Numpy/scipy over an `embed(texts, instruction) -> (n, d)` function, so any model plugs in
(an l2v encoder folder, the default model causal or bidirectional, all-MiniLM-L6-v2). The
long-document check (SciFact cut into passages, best passage per document) needs an l2v
`Encoder`: the splitter counts the encoder's own tokens.
"""

from .data import load_scifact, load_stsb, subset_retrieval
from .metrics import ndcg_at_k, spearman
from .tasks import (
    SCIFACT_QUERY_INSTRUCTION,
    STS_INSTRUCTION,
    evaluate_scifact,
    evaluate_scifact_passages,
    evaluate_stsb,
)

__all__ = ["load_scifact", "load_stsb", "subset_retrieval", "ndcg_at_k", "spearman", "STS_INSTRUCTION",
           "SCIFACT_QUERY_INSTRUCTION", "evaluate_scifact", "evaluate_scifact_passages", "evaluate_stsb"]
