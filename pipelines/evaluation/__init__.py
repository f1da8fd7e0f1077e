"""Evaluation of an encoder: STS-B (Spearman of cosine) and SciFact retrieval (nDCG@10).

Pure numpy/scipy over an `embed(texts, instruction) -> (n, d)` function, so any model plugs in
(an l2v encoder folder, the default model causal or bidirectional, all-MiniLM-L6-v2).
"""

from .data import load_scifact, load_stsb
from .metrics import ndcg_at_k, spearman
from .tasks import SCIFACT_QUERY_INSTRUCTION, STS_INSTRUCTION, evaluate_scifact, evaluate_stsb

__all__ = ["load_scifact", "load_stsb", "ndcg_at_k", "spearman", "STS_INSTRUCTION", "SCIFACT_QUERY_INSTRUCTION",
           "evaluate_scifact", "evaluate_stsb"]
