"""FAISS index over the vectors parquet, built by streaming it in chunks.

Cosine similarity: vectors are L2-normalized by the encoder, the index uses inner product.
`choose_index` picks the index from the corpus size and a memory budget; `build_index` streams
the vectors twice (a sample for training and recall queries, then the adds), never holding the
whole corpus as one array besides the index itself. faiss ids are positions in that stream
(after an in-place update, `index_update.py`, they are not: kept vectors keep their old ids);
the id map (`id_map.parquet`: faiss_id, id, file, row, and doc_id when the vectors are passages
of chunked documents) leads back to the corpus id and to the row in the vectors parquet (where
the text is, when stored). `IdMapWriter` owns that file's format. A run builds the index on Ray
workers (`index_shards.py`: sample, train, add in shards, merge) out of the pieces defined here.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .layout import vector_files_in

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
ID_MAP_FILE = "id_map.parquet"
INFO_FILE = "index_info.json"
FLAT_MAX_ROWS = 50_000  # exact search below this (autofaiss' rule of thumb)
CHUNK_ROWS = 16_384
RECALL_K = 10
HNSW_M = 32
PQ_PLATEAU = 0.005  # IVF-PQ tuning stops when doubling nprobe gains less recall@10 than this
ID_MAP_SCHEMA = pa.schema([("faiss_id", pa.int64()), ("id", pa.string()), ("file", pa.string()), ("row", pa.int64())])
DOC_ID = "doc_id"  # vectors of chunked documents: one row per passage, `id` the passage's, `doc_id` its document's
VECTOR_COLUMNS = ["id", "embedding", "n_tokens", "truncated"]  # what the adds read from the vectors (+ doc_id)


@dataclass
class IndexSpec:
    kind: str  # flat | ivf | ivfpq | hnsw
    factory: str
    reason: str
    memory_bytes: int
    params: dict = field(default_factory=dict)
    train_size: int = 0


def _ivf_nlist(n: int) -> int:
    """About 4 x sqrt(N) lists, but at least 39 training vectors per list (faiss' k-means minimum)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def _pq_bits(n_train: int) -> int:
    """8-bit codes need >= 256 centroids' worth of training vectors; fewer bits on tiny corpora."""
    return max(1, min(8, int(math.log2(max(2, n_train // 39)))))


def choose_index(n: int, dim: int, requested: str = "auto", memory_budget: int = 4 << 30) -> IndexSpec:
    """The index for `n` vectors of `dim` floats within `memory_budget` bytes (see docs/embed.md)."""
    flat_bytes = n * dim * 4
    nlist = _ivf_nlist(n)
    ivf_bytes = flat_bytes + n * 8 + nlist * dim * 4
    kind = requested
    if requested == "auto":
        if n <= FLAT_MAX_ROWS and flat_bytes <= memory_budget:
            kind, reason = (
                "flat", f"exact search: {n:,} vectors <= {FLAT_MAX_ROWS:,} and {_gib(flat_bytes)} fit the budget"
            )
        elif ivf_bytes <= memory_budget:
            kind, reason = "ivf", f"{n:,} vectors > {FLAT_MAX_ROWS:,}; IVF-Flat ({_gib(ivf_bytes)}) fits the budget"
        else:
            kind, reason = "ivfpq", f"full vectors ({_gib(ivf_bytes)}) exceed the budget {_gib(memory_budget)}: IVF-PQ"
    else:
        reason = f"requested --index {requested}"
    if kind == "flat":
        spec = IndexSpec("flat", "Flat", reason, flat_bytes)
    elif kind == "ivf":
        spec = IndexSpec("ivf", f"IVF{nlist},Flat", reason, ivf_bytes, {"nlist": nlist}, min(n, 256 * nlist))
    elif kind == "ivfpq":
        spec = _ivfpq_spec(n, dim, nlist, memory_budget, reason, strict=requested == "auto")
    elif kind == "hnsw":
        hnsw_bytes = flat_bytes + n * HNSW_M * 2 * 4
        spec = IndexSpec("hnsw", f"HNSW{HNSW_M}", reason, hnsw_bytes, {"M": HNSW_M, "efConstruction": 80})
    else:
        raise ValueError(f"unknown index kind {requested!r}; choose one of auto, flat, ivf, ivfpq, hnsw")
    if spec.memory_bytes > memory_budget:
        logger.warning("the %s index needs about %s, over the budget of %s (--index-memory)", spec.kind,
                       _gib(spec.memory_bytes), _gib(memory_budget))
    return spec


def _ivfpq_spec(n: int, dim: int, nlist: int, budget: int, reason: str, strict: bool) -> IndexSpec:
    fixed = nlist * dim * 4 + n * 8  # centroids + stored ids
    divisors = [m for m in range(1, dim // 2 + 1) if dim % m == 0] or [1]
    fitting = [m for m in divisors if fixed + n * m <= budget]
    if not fitting and strict:
        raise ValueError(
            f"even the smallest IVF-PQ index ({_gib(fixed + n)}) for {n:,} vectors exceeds --index-memory "
            f"{_gib(budget)}; raise the budget"
        )
    m = max(fitting) if fitting else min(divisors)
    train = min(n, max(256 * 39, 64 * nlist))
    bits = _pq_bits(train)
    return IndexSpec("ivfpq", f"IVF{nlist},PQ{m}x{bits}", reason, fixed + n * m * bits // 8 + 1,
                     {"nlist": nlist, "pq_m": m, "pq_bits": bits}, train)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


# ------------------------------------------------------------------ streaming the vectors
def count_vectors(files: list[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def iter_chunks(
    files: list[Path], columns: list[str], chunk_rows: int = CHUNK_ROWS
) -> Iterator[tuple[int, int, pa.RecordBatch]]:
    """(file index, first row in that file, batch) over every file in order."""
    for file_index, path in enumerate(files):
        row = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=columns):
            yield file_index, row, batch
            row += batch.num_rows


def has_doc_ids(files: list[Path]) -> bool:
    """Whether the vectors are passages (a `doc_id` column): all files or none, from the footers."""
    flags = {DOC_ID in pq.read_schema(f).names for f in files}
    if len(flags) > 1:
        raise ValueError(f"some vectors files of {Path(files[0]).parent} have a {DOC_ID} column and some do not: "
                         "chunked and unchunked vectors cannot share an index; rebuild without --incremental")
    return flags == {True}


def vector_columns(files: list[Path]) -> list[str]:
    """The columns the index adds read from `files` (doc_id too when they hold passages)."""
    return VECTOR_COLUMNS + ([DOC_ID] if has_doc_ids(files) else [])


class IdMapWriter:
    """Writes `id_map.parquet` (or a shard's part of it): one row per vector, in add order.

    Columns: faiss_id, id, file (the vectors file, relative to the version), row (in that file),
    and doc_id when the vectors are passages (so search groups by document without another read).
    """

    def __init__(self, path: Path, chunked: bool):
        self.schema = id_map_schema(chunked)
        self._writer = pq.ParquetWriter(path, self.schema)

    def write(self, faiss_ids: np.ndarray, batch: pa.RecordBatch, file_name: str, first_row: int) -> None:
        columns = {
            "faiss_id": faiss_ids, "id": batch.column("id"),
            "file": pa.array([f"vectors/{file_name}"] * len(faiss_ids), pa.string()),
            "row": np.arange(first_row, first_row + len(faiss_ids), dtype=np.int64),
        }
        if DOC_ID in self.schema.names:
            columns[DOC_ID] = batch.column(DOC_ID)
        self._writer.write_table(pa.table(columns, schema=self.schema))

    def close(self) -> None:
        self._writer.close()


def id_map_schema(chunked: bool) -> pa.Schema:
    return ID_MAP_SCHEMA.append(pa.field(DOC_ID, pa.string())) if chunked else ID_MAP_SCHEMA


def concat_id_maps(parts: list[Path], target: Path) -> None:
    """One id map from the parts written by shards (same schema, in shard order)."""
    schema = pq.read_schema(parts[0]) if parts else ID_MAP_SCHEMA
    with pq.ParquetWriter(target, schema) as writer:
        for part in parts:
            for batch in pq.ParquetFile(part).iter_batches(batch_size=CHUNK_ROWS * 4):
                writer.write_batch(batch)


def as_matrix(column: pa.Array, dim: int) -> np.ndarray:
    """fixed_size_list<float32>[dim] -> (n, dim) float32 (respects slicing offsets)."""
    return np.ascontiguousarray(column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim), dtype=np.float32)


# ------------------------------------------------------------------ build
def build_index(version_dir: Path, vectors_dir: Path, dim: int, *, requested: str = "auto",
                memory_budget: int = 4 << 30, recall_queries: int = 200, recall_target: float = 0.95,
                seed: int = 0, built_because: str = "a fresh build") -> BuiltIndex:
    """Write index.faiss, id_map.parquet and index_info.json into `version_dir`; returns the info
    and the vectors' token and truncation totals (`BuiltIndex`). One process does every step: the
    run calls it inside one Ray task (`index_shards.py`) for Flat and HNSW indexes and for IVF
    indexes too small to shard; larger IVF indexes are added on several workers instead."""
    start = time.perf_counter()
    files = vector_files_in(vectors_dir)
    n = count_vectors(files)
    spec = choose_index(n, dim, requested, memory_budget)
    logger.info("index: %s for %d vectors of dim %d (%s)", spec.factory, n, dim, spec.reason)
    query_rows, train_rows = sample_rows(n, recall_queries, spec.train_size, seed)
    queries, train = sample_vectors(files, dim, query_rows, train_rows)
    steps = {"sample": _since(start)}
    index = train_index(new_index(spec, dim), spec, train)
    steps["train"] = _since(start, steps)
    exact, totals = stream_vectors(files, dim, version_dir, queries, append_in_order(index, spec))
    steps["add"] = _since(start, steps)
    return finish_index(index, spec, version_dir, queries, exact, totals, recall_target, start, {
        "train_size": 0 if train is None else int(len(train)),
        "built_by": "rebuild",
        "built_because": built_because,
        "since_training": {"trained_count": n, "removed": 0, "added": 0},
        "workers": 1,
        "steps_s": steps,
    })


def new_index(spec: IndexSpec, dim: int):
    """An empty, untrained index for `spec` (cosine: inner product over normalized vectors)."""
    index = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    if spec.kind == "hnsw":
        index.hnsw.efConstruction = spec.params["efConstruction"]
    if spec.kind == "ivfpq":
        faiss.downcast_index(index).do_polysemous_training = False  # slow, and unused by IVF-PQ search here
    return index


def train_index(index, spec: IndexSpec, train: np.ndarray | None):
    """Train `index` in place on the sample (IVF centroids, PQ codebooks); Flat/HNSW need none."""
    if not index.is_trained:
        if train is None or len(train) == 0:
            raise ValueError(f"a {spec.kind} index needs training vectors; the corpus has none (use --index flat)")
        logger.info("training %s on %d vectors", spec.factory, len(train))
        index.train(train)
    return index


def _since(start: float, steps: dict | None = None) -> float:
    """Seconds since `start` not yet accounted to earlier steps."""
    return round(time.perf_counter() - start - sum((steps or {}).values()), 3)


def sample_rows(n: int, recall_queries: int, train_size: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Sorted positions (in the vectors stream) of the recall queries and the training sample."""
    rng = np.random.default_rng(seed)
    query_rows = np.sort(rng.choice(n, size=min(recall_queries, n), replace=False)) if n else np.zeros(0, np.int64)
    train_rows = np.sort(rng.choice(n, size=min(train_size, n), replace=False)) if train_size else None
    return query_rows, train_rows


@dataclass(frozen=True)
class BuiltIndex:
    """What a build or an update hands back: the index's description (`info`, exactly what
    index_info.json holds) and the totals of the vectors it streamed, which belong to the run's
    counts, not to the index."""

    info: dict
    tokens: int
    truncated: int

    @property
    def count(self) -> int:
        return self.info["count"]


def finish_index(index, spec: IndexSpec, version_dir: Path, queries: np.ndarray, exact: tuple, totals: dict,
                 recall_target: float, start: float, extra: dict) -> BuiltIndex:
    """Tune the search knob on the recall queries, write the index and index_info.json."""
    tuned_from = time.perf_counter()
    tuning = _tune(index, spec, queries, exact, recall_target)
    faiss.write_index(index, str(version_dir / INDEX_FILE))
    if "steps_s" in extra:
        extra = {**extra, "steps_s": {**extra["steps_s"], "tune_write": round(time.perf_counter() - tuned_from, 3)}}
    info = {
        "factory": spec.factory,
        "kind": spec.kind,
        "metric": "inner_product",
        "normalized": True,
        "dim": index.d,
        "count": int(index.ntotal),
        "params": spec.params,
        "search_params": tuning["chosen"],
        "recall_at_10": tuning["recall"],
        "recall_queries": int(len(queries)),
        "recall_note": "queries: a random sample of corpus vectors; truth: exact inner-product search over all vectors",
        "recall_target": recall_target,
        "tuning": tuning["tried"],
        "chosen_because": spec.reason,
        "memory_bytes_estimate": int(spec.memory_bytes),
        **extra,
        "build_seconds": round(time.perf_counter() - start, 3),
        "id_map": ID_MAP_FILE,
        "index_file": INDEX_FILE,
    }
    (version_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return BuiltIndex(info, tokens=totals["tokens"], truncated=totals["truncated"])


def sample_vectors(files, dim, query_rows, train_rows) -> tuple[np.ndarray, np.ndarray | None]:
    """Pass 1: gather the sampled rows (global positions) for queries and training."""
    wanted = query_rows if train_rows is None else np.union1d(query_rows, train_rows)
    gathered = np.zeros((len(wanted), dim), dtype=np.float32)
    position = 0
    for _, _, batch in iter_chunks(files, ["embedding"]):
        lo, hi = np.searchsorted(wanted, [position, position + batch.num_rows])
        if hi > lo:
            gathered[lo:hi] = as_matrix(batch.column(0), dim)[wanted[lo:hi] - position]
        position += batch.num_rows
    queries = gathered[np.searchsorted(wanted, query_rows)]
    train = None if train_rows is None else gathered[np.searchsorted(wanted, train_rows)]
    return queries, train


def append_in_order(index, spec: IndexSpec, position: int = 0):
    """A `place` for stream_vectors: every vector is added, its faiss id is its stream position
    (`position`: that of the first vector placed, > 0 for a shard of the stream)."""

    def place(ids: pa.Array, vectors: np.ndarray) -> np.ndarray:
        nonlocal position
        faiss_ids = np.arange(position, position + len(vectors), dtype=np.int64)
        position += len(vectors)
        if spec.kind in ("ivf", "ivfpq"):
            index.add_with_ids(vectors, faiss_ids)
        else:
            index.add(vectors)  # flat / HNSW: faiss numbers them in add order, the same positions
        return faiss_ids

    return place


def stream_vectors(files, dim, version_dir: Path, queries: np.ndarray, place):
    """Pass 2 over every chunk: `place(ids, vectors)` adds what the index lacks and returns each
    row's faiss id; writes the id map and keeps the exact top-k of the recall queries."""
    columns = vector_columns(files)
    chunks = iter_chunks(files, columns)
    return stream_chunks(chunks, files, dim, version_dir / ID_MAP_FILE, queries, place, chunked=DOC_ID in columns)


def stream_chunks(chunks, files, dim, id_map_path: Path, queries: np.ndarray, place, chunked: bool = False):
    """`stream_vectors` over any (file index, first row, batch) chunks (columns: VECTOR_COLUMNS,
    plus doc_id when `chunked`): a whole corpus, or the row range of one shard
    (`index_shards.py`). Returns ((exact ids, exact scores), totals)."""
    k = RECALL_K
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.full((len(queries), k), -1, dtype=np.int64)
    totals = {"tokens": 0, "truncated": 0}
    writer = IdMapWriter(id_map_path, chunked)
    try:
        for file_index, first_row, batch in chunks:
            vectors = as_matrix(batch.column("embedding"), dim)
            ids = place(batch.column("id"), vectors)
            if len(queries) and len(vectors):
                best_scores, best_ids = merge_top_k(best_scores, best_ids, *exact_top_k(queries, vectors, ids, k), k)
            writer.write(ids, batch, Path(files[file_index]).name, first_row)
            totals["tokens"] += int(np.asarray(batch.column("n_tokens")).sum())
            totals["truncated"] += int(np.asarray(batch.column("truncated")).sum())
    finally:
        writer.close()
    return (best_ids, best_scores), totals


def exact_top_k(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, faiss ids) of each query's k best `vectors` by inner product. faiss' own BLAS does
    the product, so the threads it takes follow faiss.omp_set_num_threads like the adds do."""
    scores, where = faiss.knn(queries, vectors, min(k, len(vectors)), metric=faiss.METRIC_INNER_PRODUCT)
    return scores, np.where(where >= 0, ids[np.maximum(where, 0)], -1)


def merge_top_k(scores, ids, new_scores, new_ids, k):
    all_scores = np.concatenate([scores, new_scores], axis=1)
    all_ids = np.concatenate([ids, np.broadcast_to(new_ids, new_scores.shape)], axis=1)
    take = min(k, all_scores.shape[1])
    top = np.argpartition(-all_scores, take - 1, axis=1)[:, :take]
    return np.take_along_axis(all_scores, top, 1), np.take_along_axis(all_ids, top, 1)


def recall_at_k(found: np.ndarray, exact: np.ndarray, found_scores: np.ndarray | None = None,
                exact_scores: np.ndarray | None = None, tie_eps: float = 1e-5) -> float:
    """Mean share of each query's exact top-k found by the index's top-k. With exact scores for
    both, a found id that ties the k-th exact score also counts (equal vectors under two ids)."""
    if len(exact) == 0:
        return 1.0
    hits = []
    for q, (f, e) in enumerate(zip(found, exact)):
        truth = set(e[e >= 0])
        good = set(f[f >= 0]) & truth
        if found_scores is not None and exact_scores is not None and len(truth):
            kth = np.min(exact_scores[q][e >= 0])
            good |= {i for i, s in zip(f, found_scores[q]) if i >= 0 and s >= kth - tie_eps}
        hits.append(min(len(good), len(truth)) / max(1, len(truth)))
    return float(np.mean(hits))


def search_settings(kind: str, nlist: int | None = None) -> tuple[str | None, list[int]]:
    """The knob that trades speed for recall, and the values tried from cheap to exhaustive."""
    if kind in ("ivf", "ivfpq"):
        start = max(1, nlist // 16)
        values = sorted({min(nlist, start * 2**i) for i in range(20) if start * 2 ** (i - 1) < nlist})
        return "nprobe", values
    if kind == "hnsw":
        return "efSearch", [16, 32, 64, 128, 256, 512]
    return None, []


def apply_search_params(index, params: dict) -> None:
    for name, value in params.items():
        faiss.ParameterSpace().set_index_parameter(index, name, value)


def _tune(index, spec: IndexSpec, queries: np.ndarray, exact: tuple, target: float) -> dict:
    """Raise nprobe / efSearch until recall@10 reaches `target` (or the knob is exhausted)."""
    k = min(RECALL_K, index.ntotal) or 1
    knob, values = search_settings(spec.kind, spec.params.get("nlist"))
    tried, chosen = [], {}
    exact_ids, exact_scores = exact
    scores_are_exact = spec.kind != "ivfpq"  # PQ scores are approximations: no tie credit
    for value in values or [None]:
        params = {knob: value} if knob else {}
        apply_search_params(index, params)
        if len(queries):
            found_scores, found = index.search(queries, k)
        else:
            found_scores, found = np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        recall = recall_at_k(found, exact_ids, found_scores if scores_are_exact else None, exact_scores)
        tried.append({**params, "recall_at_10": round(recall, 4)})
        chosen = params
        if recall >= target:
            break
        if spec.kind == "ivfpq" and len(tried) > 1 and recall - tried[-2]["recall_at_10"] < PQ_PLATEAU:
            # the PQ codes cap recall below the target: more lists only slow search (and this
            # tuning: the last values scan the whole index per query). Keep the smaller nprobe.
            chosen = {knob: tried[-2][knob]}
            apply_search_params(index, chosen)
            return {"chosen": chosen, "recall": tried[-2]["recall_at_10"], "tried": tried}
    return {"chosen": chosen, "recall": tried[-1]["recall_at_10"], "tried": tried}
