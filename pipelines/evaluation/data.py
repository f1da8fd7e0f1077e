"""Readers for the evaluation sets in ../shared/data (REFERENCE.md section 5)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass
class StsPairs:
    first: list[str]
    second: list[str]
    scores: list[float]  # gold similarity 0-5


def load_stsb(folder: str | Path, split: str = "test") -> StsPairs:
    """sts-<split>.csv: tab-separated genre, file, year, id, score, sentence1, sentence2 (sometimes
    more columns after). Split on tabs only: a quote-aware CSV reader silently drops rows."""
    path = Path(folder) / f"sts-{split}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass --stsb the folder holding sts-train/dev/test.csv")
    pairs = StsPairs([], [], [])
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 7:
            raise ValueError(f"{path}:{number}: expected at least 7 tab-separated fields, got {len(parts)}")
        pairs.scores.append(float(parts[4]))
        pairs.first.append(parts[5])
        pairs.second.append(parts[6])
    return pairs


@dataclass
class Retrieval:
    doc_ids: list[str]
    docs: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}


def load_scifact(folder: str | Path, split: str = "test") -> Retrieval:
    """BEIR layout: corpus.jsonl (_id, title, text), queries.jsonl (_id, text), qrels/<split>.tsv.
    Documents are "title text" (BEIR's convention); only queries with judgements are kept."""
    folder = Path(folder)
    for needed in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (folder / needed).is_file():
            raise FileNotFoundError(f"{folder / needed} not found: pass --scifact the BEIR SciFact folder")
    qrels: dict[str, dict[str, int]] = {}
    for line in (folder / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]:
        if line.strip():
            qid, did, score = line.split("\t")[:3]
            qrels.setdefault(qid, {})[did] = int(score)
    doc_ids, docs = [], []
    for line in (folder / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        doc_ids.append(str(row["_id"]))
        docs.append(f"{row.get('title', '')} {row['text']}".strip())
    query_ids, queries = [], []
    for line in (folder / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if str(row["_id"]) in qrels:
            query_ids.append(str(row["_id"]))
            queries.append(row["text"])
    return Retrieval(doc_ids, docs, query_ids, queries, qrels)


def subset_retrieval(data: Retrieval, queries: int | None = None, docs: int | None = None) -> Retrieval:
    """A smaller copy for smoke runs: the first `queries` queries, and `docs` documents: those
    judged for the kept queries first (so every query can still find its answers), then the
    others in corpus order. None keeps all."""
    query_ids, texts = data.query_ids[:queries], data.queries[:queries]
    qrels = {q: data.qrels[q] for q in query_ids}
    if docs is None:
        return replace(data, query_ids=query_ids, queries=texts, qrels=qrels)
    judged = {d for q in query_ids for d in qrels[q]}
    order = sorted(range(len(data.doc_ids)), key=lambda j: data.doc_ids[j] not in judged)  # stable: corpus order
    keep = sorted(order[:max(docs, len(judged))])
    return replace(data, doc_ids=[data.doc_ids[j] for j in keep], docs=[data.docs[j] for j in keep],
                   query_ids=query_ids, queries=texts, qrels=qrels)
