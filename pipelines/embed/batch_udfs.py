"""The per-batch functions of the embed Dataset: read planned rows -> tokenize (CPU tasks) ->
embed (actors).

Each stage is a plain function or class over a pyarrow batch, so tests can call it on a table
without a cluster. `dataflow.py` wires them into a Dataset.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from l2v_core.batching import padded_positions, plan_micro_batches

from .. import faults
from .plan_tasks import planned_rows_of_file
from .scan import Columns, compose_text, content_hash, normalize_ids, open_parquet

logger = logging.getLogger(__name__)

READ_BATCH_ROWS = 4096


# ------------------------------------------------------------------ read
INPUT_CHANGED = "the vectors written do not match the scanned input"


class InputChangedError(RuntimeError):
    """An input file changed between the scan and the read: the plan no longer describes it."""


def read_planned_rows(units: pa.Table, *, columns: Columns, store_text: bool = True,
                      chunked: bool = False) -> Iterator[pa.Table]:
    """units: rows of (path, file_index, rows, plan_dir) -> tables of (id, text, content_hash)
    holding the file's planned rows (plan/embed), in file order; `chunked` adds the parts the
    splitter needs (title, body: the text column as it is). Each row read must still have the id
    and content hash the scan saw: a file rewritten since is never embedded."""
    for path, file_index, expected, plan_dir in zip(*(units.column(c).to_pylist()
                                                      for c in ("path", "file_index", "rows", "plan_dir"))):
        planned = planned_rows_of_file(plan_dir, file_index)
        rows = planned.column("row").to_numpy()
        if len(rows) != expected:
            raise RuntimeError(f"the plan lists {len(rows)} rows of {path} to embed, the driver expected {expected}")
        offset = done = 0
        for batch in open_parquet(path).iter_batches(batch_size=READ_BATCH_ROWS, columns=columns.names):
            lo, hi = (int(i) for i in np.searchsorted(rows, [offset, offset + batch.num_rows]))
            if hi > lo:
                table = _compose(batch.take(pa.array(rows[lo:hi] - offset)), columns, chunked)
                _check_planned(table, planned.slice(lo, hi - lo), path)
                done = hi
                yield table
            offset += batch.num_rows
        if done != len(rows):
            raise InputChangedError(f"{INPUT_CHANGED}: {path} now has {offset} rows, fewer than the scan saw "
                                    f"(an input file changed during the run?); nothing was published: run again "
                                    f"once the input is stable")


def _check_planned(table: pa.Table, planned: pa.Table, path: str) -> None:
    same = (table.column("id").equals(planned.column("id").cast(pa.string()))
            and table.column("content_hash").equals(planned.column("content_hash").cast(pa.string())))
    if not same:
        raise InputChangedError(f"{INPUT_CHANGED}: {path} holds other ids or texts than the scan saw "
                                f"(an input file changed during the run?); nothing was published: run again once "
                                f"the input is stable")


def _compose(batch: pa.RecordBatch, columns: Columns, chunked: bool = False) -> pa.Table:
    ids = normalize_ids(batch.column(columns.id))
    texts = batch.column(columns.text).to_pylist()
    titles = batch.column(columns.title).to_pylist() if columns.title else [None] * batch.num_rows
    composed = [compose_text(title, text) for title, text in zip(titles, texts)]
    table = pa.table({
        "id": ids,
        "text": pa.array(composed, pa.string()),
        "content_hash": pa.array([content_hash(t) for t in composed], pa.string()),
    })
    if chunked:  # the splitter puts the title before every passage; spans index the text column
        table = table.append_column("title", pa.array(titles, pa.string())).append_column(
            "body", pa.array(texts, pa.string()))
    return table


# ------------------------------------------------------------------ tokenize
@functools.lru_cache(maxsize=4)
def _tokenizer(model_path: str):
    from l2v_core import load_tokenizer

    return load_tokenizer(model_path)


def tokenize_rows(batch: pa.Table, *, model_path: str, max_length: int, instruction: str | None,
                  chunking: dict | None = None) -> pa.Table:
    """Adds input_ids, pool_mask (unpadded lists), n_tokens and truncated. CPU only, no model.
    With `chunking` ({chunk_tokens, chunk_overlap}) each document becomes its passages instead
    (`split_into_passages`)."""
    from l2v_core import tokenize_texts

    if chunking:
        return split_into_passages(batch, model_path=model_path, instruction=instruction, **chunking)
    tokens = tokenize_texts(_tokenizer(model_path), batch.column("text").to_pylist(), instruction, max_length)
    return (
        batch.append_column("input_ids", pa.array(tokens.input_ids, pa.list_(pa.int32())))
        .append_column("pool_mask", pa.array(tokens.pool_mask, pa.list_(pa.int8())))
        .append_column("n_tokens", pa.array(tokens.n_tokens, pa.int32()))
        .append_column("truncated", pa.array(tokens.truncated, pa.bool_()))
    )


def passage_id(doc_id: str, chunk: int) -> str:
    """A passage's id in the vectors and the index: unique, since a chunk number holds no '#'."""
    return f"{doc_id}#{chunk}"


def split_into_passages(batch: pa.Table, *, model_path: str, instruction: str | None, chunk_tokens: int,
                        chunk_overlap: int) -> pa.Table:
    """Documents (id, text, content_hash, title, body) -> one row per passage: the passage id,
    its document's id and content hash, chunk / chunks, its character span in the document's
    text and the passage text, with tokens built by `l2v_core.chunking` (never truncated)."""
    tokenizer = _tokenizer(model_path)
    columns: dict[str, list] = {name: [] for name in PASSAGE_COLUMNS}
    for doc_id, digest, title, body in zip(*(batch.column(c).to_pylist()
                                             for c in ("id", "content_hash", "title", "body"))):
        passages = _split(tokenizer, doc_id, body, title, instruction, chunk_tokens, chunk_overlap)
        for p in passages:
            values = (passage_id(doc_id, p.chunk), body[p.char_start:p.char_end], digest, doc_id, p.chunk,
                      len(passages), p.char_start, p.char_end, p.input_ids, p.pool_mask, len(p.input_ids), False)
            for name, value in zip(PASSAGE_COLUMNS, values):
                columns[name].append(value)
    return pa.table(columns, schema=PASSAGE_SCHEMA)


def _split(tokenizer, doc_id: str, body: str, title: str | None, instruction: str | None, chunk_tokens: int,
           overlap: int) -> list:
    from l2v_core import split_document

    try:
        return split_document(tokenizer, body, chunk_tokens=chunk_tokens, overlap=overlap, title=title,
                              instruction=instruction)
    except ValueError:
        if not (isinstance(title, str) and title.strip()):
            raise
        # a title that leaves a window no room for text: the text matters more than its title
        logger.warning("document %r: its title leaves no room for text in a %d-token passage; its passages are "
                       "embedded without the title", doc_id, chunk_tokens)
        return split_document(tokenizer, body, chunk_tokens=chunk_tokens, overlap=overlap, instruction=instruction)


PASSAGE_SCHEMA = pa.schema([
    ("id", pa.string()), ("text", pa.string()), ("content_hash", pa.string()), ("doc_id", pa.string()),
    ("chunk", pa.int32()), ("chunks", pa.int32()), ("char_start", pa.int32()), ("char_end", pa.int32()),
    ("input_ids", pa.list_(pa.int32())), ("pool_mask", pa.list_(pa.int8())), ("n_tokens", pa.int32()),
    ("truncated", pa.bool_()),
])
PASSAGE_COLUMNS = PASSAGE_SCHEMA.names


# ------------------------------------------------------------------ embed
CHUNK_FIELDS = [("doc_id", pa.string()), ("chunk", pa.int32()), ("chunks", pa.int32()), ("char_start", pa.int32()),
                ("char_end", pa.int32())]


def vectors_schema(dim: int, store_text: bool, chunked: bool = False) -> pa.Schema:
    """The vectors parquet. Chunked: one row per passage (`id` is the passage's, `content_hash`
    its document's), with its document, place and character span in the document's text."""
    fields = [
        ("id", pa.string()), ("embedding", pa.list_(pa.float32(), dim)), ("content_hash", pa.string()),
        ("n_tokens", pa.int32()), ("truncated", pa.bool_()),
    ]
    return pa.schema(fields + ([("text", pa.string())] if store_text else []) + (CHUNK_FIELDS if chunked else []))


def count_documents(path: str) -> tuple[int, int, int]:
    """(passages, documents, passages its documents should have) of one chunked vectors file:
    every document has exactly one chunk 0, which carries its passage count."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["chunk", "chunks"])
    first = table.filter(pc.equal(table.column("chunk"), 0))
    return table.num_rows, first.num_rows, int(pc.sum(first.column("chunks")).as_py() or 0)


class EmbedActor:
    """Loads the encoder once; embeds batches of tokenized rows, sorted by length and cut into
    micro-batches by a token budget and a padding cap inside each batch (`l2v_core.batching`)."""

    def __init__(self, *, model: str | None, identity: dict, max_length: int | None, device: str | None,
                 dtype: str | None, batch_tokens: int, store_text: bool, cpu_threads: int | None, stats_dir: str,
                 max_padding: float = 0.1, fault: str | None = None, actors: int = 1, chunked: bool = False):
        import torch

        from l2v_core import Encoder, pick_device_and_dtype

        device, dtype = pick_device_and_dtype(device, dtype)
        if device.type == "cpu":
            # counted here, on the actor's node: the driver's may have far fewer cores
            torch.set_num_threads(cpu_threads or max(1, (os.cpu_count() or 1) // actors))
        kwargs = {"max_length": max_length} if max_length else {}
        self.encoder = Encoder.from_pretrained(model, device=device, dtype=dtype, **kwargs)
        if self.encoder.identity() != identity:
            raise RuntimeError(
                f"the encoder loaded by this actor differs from the one the run was planned with "
                f"(did {model!r} change during the run?): {self.encoder.identity()} != {identity}"
            )
        self.batch_tokens = batch_tokens
        self.max_padding = max_padding
        self.store_text = store_text
        self.schema = vectors_schema(self.encoder.dim, store_text, chunked)
        self.stats = {"rows": 0, "tokens": 0, "padded_tokens": 0, "busy_s": 0.0, "device": str(device),
                      "dtype": str(dtype), "threads": torch.get_num_threads()}
        self.stats_dir = stats_dir
        self.stats_path = Path(stats_dir) / f"actor-{uuid.uuid4().hex[:12]}.json"
        self.stats_path.parent.mkdir(parents=True, exist_ok=True)
        self._save_stats()  # at start-up too: one file per actor process, so restarts are counted
        self.fault = fault  # L2V_FAULT for crash tests (see faults.py); None in real runs
        self.batches = 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        from l2v_core import TokenizedBatch

        self.batches += 1
        if self.batches == faults.ACTOR_FAULT_BATCH:
            faults.once(self.fault, faults.EMBED_ACTOR, self.stats_dir)
        faults.delay(self.fault, faults.EMBED_ACTOR)
        start = time.perf_counter()
        n_tokens = batch.column("n_tokens").to_pylist()
        input_ids = batch.column("input_ids").to_pylist()
        pool_mask = batch.column("pool_mask").to_pylist()
        vectors = np.empty((len(n_tokens), self.encoder.dim), dtype=np.float32)
        groups = plan_micro_batches(n_tokens, self.batch_tokens, self.max_padding)
        for rows in groups:
            group = TokenizedBatch([input_ids[r] for r in rows], [pool_mask[r] for r in rows],
                                   [n_tokens[r] for r in rows], [False] * len(rows))
            vectors[rows] = self.encoder.encode_tokenized(group, batch_tokens=self.batch_tokens, normalize=True)
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1])
        columns = [embedding if name == "embedding" else batch.column(name) for name in self.schema.names]
        self._record(n_tokens, padded_positions(n_tokens, groups), time.perf_counter() - start)
        return pa.Table.from_arrays(columns, schema=self.schema)

    def _record(self, n_tokens: list[int], padded: int, seconds: float) -> None:
        self.stats["rows"] += len(n_tokens)
        self.stats["tokens"] += sum(n_tokens)
        self.stats["padded_tokens"] += padded
        self.stats["busy_s"] += seconds
        self._save_stats()

    def _save_stats(self) -> None:
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.stats))
        os.replace(tmp, self.stats_path)


def read_actor_stats(stats_dir: Path) -> dict:
    """Sum of every embed actor's counters (rows, tokens, padded tokens, busy seconds). `actors`
    counts actor processes started: more than the pool size means Ray restarted some;
    `rows_per_actor` shows how evenly the work spread. Rows of a
    batch that Ray retried after a restart are counted twice here (the vectors hold them once)."""
    total = {"rows": 0, "tokens": 0, "padded_tokens": 0.0, "busy_s": 0.0, "actors": 0, "rows_per_actor": []}
    for path in sorted(Path(stats_dir).glob("actor-*.json")):
        stats = json.loads(path.read_text())
        for key in ("rows", "tokens", "padded_tokens", "busy_s"):
            total[key] += stats[key]
        total["actors"] += 1
        total["rows_per_actor"].append(stats["rows"])
        total["device"], total["dtype"], total["threads"] = stats["device"], stats["dtype"], stats["threads"]
    total["padding_share"] = 1.0 - total["tokens"] / total["padded_tokens"] if total["padded_tokens"] else 0.0
    return total
