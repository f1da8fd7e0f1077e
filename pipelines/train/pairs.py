"""Pairs for the supervised stage: read a parquet or JSONL file of (query, positive, optional hard
negative, optional instruction), skip unusable rows (counted and logged), tokenize.

Columns are named in the stage settings (`query_column`, ...); a missing one is an error naming
the columns the file has. A row whose query or positive is null or blank is skipped; a null or
blank negative means "no hard negative" (that row uses in-batch negatives only). Queries get the
instruction (the row's own, else the stage's), positives and negatives none (LLM2Vec's setting).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import ray

from l2v_core.contrastive import NO_TEXT, text_key

from .config import SupervisedSettings
from .data import _is_parquet, _tokenizer

logger = logging.getLogger(__name__)
FIELDS = ("query", "positive", "negative", "instruction")  # the names the rest of the stage uses
_READ_BATCH_ROWS = 256


@dataclass(frozen=True)
class PairColumns:
    """The file's column for each field (negative, instruction: None = the file has none)."""

    query: str
    positive: str
    negative: str | None
    instruction: str | None


@dataclass(frozen=True)
class PairCounts:
    """What the check of a pairs file found (summed over the whole file by Ray Data)."""

    rows: int
    kept: int
    bad_query: int  # null or blank query: skipped
    bad_positive: int  # null or blank positive: skipped
    with_negative: int  # kept rows with a hard negative

    @property
    def skipped(self) -> int:
        return self.rows - self.kept


def resolve_columns(found: list[str], stage: SupervisedSettings) -> PairColumns:
    """The configured columns, checked against the file's `found` columns. A missing query,
    positive or instruction column is an error naming what the file has; a missing negative
    column is a warning (the run trains with in-batch negatives only)."""
    wanted = {"query_column": stage.query_column, "positive_column": stage.positive_column}
    if stage.instruction_column:
        wanted["instruction_column"] = stage.instruction_column
    missing = {field: name for field, name in wanted.items() if name not in found}
    if missing:
        listed = ", ".join(f"{field}={name!r}" for field, name in missing.items())
        raise ValueError(
            f"the pairs file has no column for {listed}; its columns are {found}. Set supervised.query_column, "
            f"positive_column, negative_column (null = none) and instruction_column in the config to the file's names"
        )
    negative = stage.negative_column
    if negative and negative not in found:
        logger.warning("pairs: no hard-negative column %r (columns: %s): training with in-batch negatives only; set "
                       "supervised.negative_column to the file's column, or null to silence this", negative, found)
        negative = None
    return PairColumns(stage.query_column, stage.positive_column, negative, stage.instruction_column)


def read_pairs(path: str, stage: SupervisedSettings) -> ray.data.Dataset:
    """The pairs file as a dataset with the columns query, positive, negative, instruction (strings,
    null where absent), before any row is checked."""
    local = Path(path)
    if "://" not in path and not local.exists():
        raise FileNotFoundError(f"pairs file {path} does not exist (pass a parquet or JSONL file or folder)")
    ds = ray.data.read_parquet(path) if _is_parquet(path) else ray.data.read_json(path, lines=True)
    columns = resolve_columns(ds.schema().names, stage)
    return ds.map_batches(_select, fn_kwargs={"columns": columns}, batch_format="pyarrow")


def _select(batch: pa.Table, *, columns: PairColumns) -> pa.Table:
    """Keep the four fields under their standard names, as strings (an all-null JSON column is typed null)."""
    out = {}
    for field in FIELDS:
        name = getattr(columns, field)
        column = batch.column(name) if name else pa.nulls(batch.num_rows)
        out[field] = column.cast(pa.string())
    return pa.table(out)


def _present(column) -> pa.Array:
    """True where a text is neither null nor blank."""
    return pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0), False)


def _problems(batch: pa.Table) -> pa.Table:
    """One row per batch: how many rows it has and why some cannot be used."""
    query, positive = _present(batch.column("query")), _present(batch.column("positive"))
    kept = pc.and_(query, positive)
    negative = pc.and_(kept, _present(batch.column("negative")))
    n = batch.num_rows
    return pa.table({"rows": [n], "kept": [_count(kept)], "bad_query": [n - _count(query)],
                     "bad_positive": [n - _count(positive)], "with_negative": [_count(negative)]})


def _count(mask) -> int:
    return int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)


def count_pairs(ds: ray.data.Dataset) -> PairCounts:
    """Check every row (a Ray Data pass over the file; only the sums reach the driver)."""
    fields = list(PairCounts.__dataclass_fields__)
    sums = ds.map_batches(_problems, batch_format="pyarrow").sum(fields)
    if sums is None:  # an empty file
        return PairCounts(0, 0, 0, 0, 0)
    return PairCounts(**{f: int(sums[f"sum({f})"]) for f in fields})


def _keep_usable(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.and_(_present(batch.column("query")), _present(batch.column("positive"))))


def tokenize_pairs(batch: dict, *, model_path: str, max_length: int, instruction: str | None) -> pa.Table:
    """{query, positive, negative, instruction: (n,)} -> one row per pair: token ids and pool masks
    of the query (behind its instruction), the positive and the negative (empty lists where the row
    has none), and the int64 text keys that false-negative masking compares."""
    from l2v_core import tokenize_texts

    tokenizer = _tokenizer(model_path)
    queries = [str(t).strip() for t in batch["query"]]
    positives = [str(t).strip() for t in batch["positive"]]
    negatives = [str(t).strip() if t is not None and str(t).strip() else None for t in batch["negative"]]
    own = [str(t).strip() if t is not None and str(t).strip() else None for t in batch["instruction"]]
    query_ids: list = [None] * len(queries)
    query_pool: list = [None] * len(queries)
    for inst in set(i or instruction for i in own):  # one tokenizer call per distinct instruction
        rows = [i for i, o in enumerate(own) if (o or instruction) == inst]
        tok = tokenize_texts(tokenizer, [queries[i] for i in rows], inst, max_length=max_length)
        for row, ids, pool in zip(rows, tok.input_ids, tok.pool_mask):
            query_ids[row], query_pool[row] = ids, pool
    pos = tokenize_texts(tokenizer, positives, None, max_length=max_length)
    present = [i for i, n in enumerate(negatives) if n]
    neg = tokenize_texts(tokenizer, [negatives[i] for i in present], None, max_length=max_length)
    neg_ids, neg_pool = [[] for _ in negatives], [[] for _ in negatives]
    for row, ids, pool in zip(present, neg.input_ids, neg.pool_mask):
        neg_ids[row], neg_pool[row] = ids, pool
    ids_type, pool_type = pa.list_(pa.int32()), pa.list_(pa.int8())
    return pa.table({
        "query_ids": pa.array(query_ids, ids_type), "query_pool": pa.array(query_pool, pool_type),
        "positive_ids": pa.array(pos.input_ids, ids_type), "positive_pool": pa.array(pos.pool_mask, pool_type),
        "negative_ids": pa.array(neg_ids, ids_type), "negative_pool": pa.array(neg_pool, pool_type),
        "keys": pa.array([[text_key(q), text_key(p), text_key(n) if n else NO_TEXT]
                          for q, p, n in zip(queries, positives, negatives)], pa.list_(pa.int64(), 3)),
    })


def supervised_pairs(path: str, *, model_path: str, stage: SupervisedSettings) -> tuple[ray.data.Dataset, PairCounts]:
    """The supervised training set (tokenized pairs) and the counts of the rows read, kept and skipped.
    Skipped rows are logged as a warning; a file with no usable row is an error."""
    ds = read_pairs(path, stage)
    counts = count_pairs(ds)
    if counts.skipped:
        logger.warning("pairs %s: skipped %d of %d rows with a null or empty field (query: %d, positive: %d)",
                       path, counts.skipped, counts.rows, counts.bad_query, counts.bad_positive)
    logger.info("pairs %s: %d rows kept, %d with a hard negative", path, counts.kept, counts.with_negative)
    if counts.kept == 0:
        raise ValueError(f"pairs file {path} has no row with both a query and a positive ({counts.rows} rows read)")
    tokenized = ds.map_batches(_keep_usable, batch_format="pyarrow").map_batches(
        tokenize_pairs, fn_kwargs={"model_path": model_path, "max_length": stage.max_length,
                                   "instruction": stage.instruction},
        batch_size=_READ_BATCH_ROWS, batch_format="numpy",
    )
    return tokenized, counts
