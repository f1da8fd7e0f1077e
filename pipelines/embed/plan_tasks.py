"""The plan's work, as plain functions that each run inside one Ray task (`plan.py` wires them).

Everything here works on one input file, one stored vectors file or one id partition, and
writes its rows as parquet under the plan folder; only counts go back to the driver. This module
owns the plan folder's format:

    plan/
      shuffle/p00007/input-000003.parquet   valid rows of input file 3 whose id falls in partition 7:
                                            id, content_hash, file_index, row
      shuffle/p00007/stored-000002.parquet  stored vectors file 2's rows in partition 7 (STORED_SCHEMA)
      quarantine/scan-000003.parquet        rows of input file 3 that failed validation (QUARANTINE_SCHEMA)
      quarantine/dup-00007.parquet          duplicate copies found in partition 7 (QUARANTINE_SCHEMA)
      embed/part-00007.parquet              rows the model embeds: file_index, row, id, content_hash
      reuse/part-00007.parquet              stored rows copied instead: source, row, id
      plan.json                             the summary (`plan.py`)

An id always hashes to the same partition, so every copy of an id, and every stored vector of
it, meet in one task: the two decisions below need nothing from other partitions.

- **Duplicate ids** (`keep_first_copies`): the first valid copy in input order (files sorted by
  path, then rows in file order) is kept; every other copy is quarantined naming the kept copy.
- **The diff against stored vectors** (`diff_against_stored`): a kept row whose
  (id, content_hash) is stored in a reuse source (the published version with --incremental, then
  interrupted runs, newest first; `incremental.py` picks them) keeps its vectors, from the
  best-ranked version holding all of them (every passage of a chunked document). Every other
  kept row is embedded. Ids of the published version that no kept row has are deleted.
  Passages are keyed by their document: a document's content hash decides for all of them.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import faults
from .scan import DUPLICATE_ID, GOOD_SCHEMA, QUARANTINE_SCHEMA, Columns, scan_file

ROW_BITS = 40  # a row's place in input order: (file_index << 40) + row; a stored row's rank: (source << 40) + row
ROW_MASK = (1 << ROW_BITS) - 1
ROW_GROUP_ROWS = 65536  # small row groups: readers of one file's rows skip the others by their statistics
SHUFFLE, QUARANTINE, EMBED, REUSE = "shuffle", "quarantine", "embed", "reuse"
PLAN_FILE = "plan.json"
# L2V_FAULT=plan_task:kill (crash tests): the task resolving partition 0 dies once, after writing its
# files, as a worker lost during the plan's shuffle would; Ray retries it (see faults.py)
PLAN_TASK_FAULT = "plan_task"

INPUT_SCHEMA = GOOD_SCHEMA.append(pa.field("file_index", pa.int32()))
# A stored vector, keyed by its document: `id` is the document's id, `vector_id` the row's own id
# (the same string unless the vectors are passages), `group` the version it belongs to (0 = the
# best-ranked source), `chunk` / `chunks` its place among its document's passages (0 / 1 unchunked).
STORED_SCHEMA = pa.schema([("id", pa.string()), ("content_hash", pa.string()), ("rank", pa.int64()),
                           ("vector_id", pa.string()), ("group", pa.int32()), ("chunk", pa.int32()),
                           ("chunks", pa.int32())])
EMBED_SCHEMA = pa.schema([("file_index", pa.int32()), ("row", pa.int64()), ("id", pa.string()),
                          ("content_hash", pa.string())])
REUSE_SCHEMA = pa.schema([("source", pa.int32()), ("row", pa.int64()), ("id", pa.string())])


# ------------------------------------------------------------------ what goes back to the driver
@dataclass(frozen=True)
class ScannedFile:
    """One input file's scan, as counts. `error` / `missing_columns` / `bad_id_type`: why the file
    stops (then nothing of it was written)."""

    path: str
    file_index: int
    num_rows: int = 0
    valid: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)  # by reason
    fingerprint: int = 0  # of its quarantine rows (`fingerprint`)
    error: str | None = None
    missing_columns: str | None = None
    bad_id_type: str | None = None
    cpu_s: float = 0.0  # the task's CPU time: plan cost independent of how busy the cluster was


@dataclass(frozen=True)
class StoredFile:
    """One stored vectors file's keys, partitioned; `error` when it cannot be used."""

    path: str
    source: int
    rows: int = 0
    error: str | None = None
    cpu_s: float = 0.0


@dataclass(frozen=True)
class PartitionResult:
    """One id partition's decisions, as counts."""

    partition: int
    kept: int = 0  # embedded or reused
    duplicates: int = 0
    deleted: int = 0  # published ids no kept row has
    fingerprint: int = 0  # of its duplicate quarantine rows
    to_embed_by_file: dict[int, int] = field(default_factory=dict)
    reused_by_source: dict[int, int] = field(default_factory=dict)  # stored rows (passages, when chunked)
    reused_docs: int = 0
    reused_docs_published: int = 0  # part of reused_docs: from the published version's files
    cpu_s: float = 0.0


# ------------------------------------------------------------------ helpers
def partition_of(ids: pa.Array | pa.ChunkedArray, partitions: int) -> np.ndarray:
    """The partition of each id: crc32 of its UTF-8 bytes, the same in every process (Python's
    own hash() is salted per process)."""
    return np.fromiter((zlib.crc32(i.encode("utf-8", "surrogatepass")) % partitions for i in ids.to_pylist()),
                       dtype=np.int64, count=len(ids))


def fingerprint(quarantine: pa.Table) -> int:
    """An order-free fingerprint of quarantine rows (source_file, source_row, id, reason): the sum
    of their 64-bit hashes. Two quarantines with equal fingerprints and counts are the same rows
    for the same reasons (the no-change check of an incremental run compares them), without
    either being gathered anywhere."""
    total = 0
    columns = [quarantine.column(c).to_pylist() for c in ("source_file", "source_row", "id", "reason")]
    for key in zip(*columns):
        digest = hashlib.blake2b(repr(key).encode("utf-8", "surrogatepass"), digest_size=8).digest()
        total += int.from_bytes(digest, "little")
    return total % (1 << 64)


def fingerprint_file(path: str) -> tuple[int, int]:
    """(rows, fingerprint) of a quarantine parquet file, read batch by batch."""
    if not Path(path).exists():
        return 0, 0
    rows = total = 0
    for batch in pq.ParquetFile(path).iter_batches(columns=["source_file", "source_row", "id", "reason"]):
        rows += batch.num_rows
        total += fingerprint(pa.Table.from_batches([batch]))
    return rows, total % (1 << 64)


def _partition_dir(plan_dir: Path, partition: int) -> Path:
    return Path(plan_dir) / SHUFFLE / f"p{partition:05d}"


def _write_partitioned(table: pa.Table, parts: np.ndarray, plan_dir: Path, name: str) -> None:
    """Write the rows of each partition to shuffle/pNNNNN/name (row order kept inside each)."""
    order = np.argsort(parts, kind="stable")
    table, parts = table.take(pa.array(order)), parts[order]
    bounds = np.searchsorted(parts, np.arange(parts[-1] + 2)) if len(parts) else []
    for p in range(len(bounds) - 1):
        lo, hi = int(bounds[p]), int(bounds[p + 1])
        if hi > lo:
            folder = _partition_dir(plan_dir, p)
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(table.slice(lo, hi - lo), folder / name)


def _write(table: pa.Table, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / name, row_group_size=ROW_GROUP_ROWS)


# ------------------------------------------------------------------ task 1: scan an input file
def scan_to_partitions(uri: str, file_index: int, columns: Columns, plan_dir: str, partitions: int) -> ScannedFile:
    """Scan one input file: its quarantine rows to quarantine/scan-NNNNNN.parquet, its valid rows
    to their id partitions."""
    cpu = time.process_time()
    scan = scan_file(uri, columns)
    if scan.good is None:
        return ScannedFile(uri, file_index, error=scan.error, missing_columns=scan.missing_columns,
                           bad_id_type=scan.bad_id_type)
    bad = scan.bad
    quarantine = pa.table({
        "id": bad.column("id"), "reason": bad.column("reason"), "detail": bad.column("detail"),
        "source_file": pa.array([uri] * bad.num_rows, pa.string()), "source_row": bad.column("row"),
        "text_preview": bad.column("text_preview"),
    }, schema=QUARANTINE_SCHEMA)
    if bad.num_rows:
        _write(quarantine, Path(plan_dir) / QUARANTINE, f"scan-{file_index:06d}.parquet")
    good = scan.good.append_column("file_index", pa.array(np.full(scan.good.num_rows, file_index, np.int32)))
    if good.num_rows:
        _write_partitioned(good, partition_of(good.column("id"), partitions), Path(plan_dir),
                           f"input-{file_index:06d}.parquet")
    return ScannedFile(uri, file_index, num_rows=scan.num_rows, valid=good.num_rows,
                       quarantined=_by_reason(quarantine), fingerprint=fingerprint(quarantine),
                       cpu_s=time.process_time() - cpu)


def _by_reason(quarantine: pa.Table) -> dict[str, int]:
    if not quarantine.num_rows:
        return {}
    return {item["values"]: item["counts"] for item in pc.value_counts(quarantine.column("reason")).to_pylist()}


# ------------------------------------------------------------------ task 2: a stored vectors file
def stored_to_partitions(path: str, source: int, group: int, schema: pa.Schema, plan_dir: str,
                         partitions: int) -> StoredFile:
    """The keys (STORED_SCHEMA) of one reusable vectors file, to their document's id partitions.
    A file that cannot be read (an interrupted run cut it off before its footer) or has another
    schema comes back with `error`; the driver decides what that means."""
    cpu = time.process_time()
    chunked = "doc_id" in schema.names
    try:
        parquet = pq.ParquetFile(path)
        if not parquet.schema_arrow.equals(schema, check_metadata=False):
            raise ValueError(f"its schema {parquet.schema_arrow} is not the expected {schema}")
        table = parquet.read(columns=["id", "content_hash"] + (["doc_id", "chunk", "chunks"] if chunked else []))
    except Exception as err:  # noqa: BLE001 - any reader failure means the file is unusable
        return StoredFile(path, source, error=f"{type(err).__name__}: {err}")
    n = table.num_rows
    rank = (source << ROW_BITS) + np.arange(n, dtype=np.int64)
    vector_ids = table.column("id")
    table = pa.table({
        "id": table.column("doc_id") if chunked else vector_ids, "content_hash": table.column("content_hash"),
        "rank": pa.array(rank), "vector_id": vector_ids, "group": pa.array(np.full(n, group, np.int32)),
        "chunk": table.column("chunk") if chunked else pa.array(np.zeros(n, np.int32)),
        "chunks": table.column("chunks") if chunked else pa.array(np.ones(n, np.int32)),
    }, schema=STORED_SCHEMA)
    if table.num_rows:
        _write_partitioned(table, partition_of(table.column("id"), partitions), Path(plan_dir),
                           f"stored-{source:06d}.parquet")
    return StoredFile(path, source, rows=table.num_rows, cpu_s=time.process_time() - cpu)


# ------------------------------------------------------------------ task 3: one id partition
def resolve_partition(partition: int, plan_dir: str, files: list[str], published_sources: int,
                      fault: str | None = None) -> PartitionResult:
    """Dedupe this partition's valid rows, diff them against its stored rows, and write the rows
    to embed, the rows to reuse and the duplicates' quarantine. A retried task (its worker lost)
    rewrites the same files."""
    cpu = time.process_time()
    folder, plan_dir = _partition_dir(plan_dir, partition), Path(plan_dir)
    rows = _read_all(sorted(folder.glob("input-*.parquet")), INPUT_SCHEMA)
    stored = _read_all(sorted(folder.glob("stored-*.parquet")), STORED_SCHEMA)
    kept, duplicates = keep_first_copies(rows, files)
    diff = diff_against_stored(kept, stored, published_sources)
    name = f"part-{partition:05d}.parquet"
    if diff.to_embed.num_rows:
        _write(diff.to_embed, plan_dir / EMBED, name)
    if diff.reused.num_rows:
        _write(diff.reused, plan_dir / REUSE, name)
    if duplicates.num_rows:
        _write(duplicates, plan_dir / QUARANTINE, f"dup-{partition:05d}.parquet")
    if partition == 0:
        faults.once(fault, PLAN_TASK_FAULT, plan_dir)  # crash tests only: the worker dies after writing
    return PartitionResult(
        partition, kept=kept.num_rows, duplicates=duplicates.num_rows, deleted=diff.deleted,
        fingerprint=fingerprint(duplicates),
        to_embed_by_file=_counts_of(diff.to_embed.column("file_index")),
        reused_by_source=_counts_of(diff.reused.column("source")), reused_docs=diff.reused_docs,
        reused_docs_published=diff.reused_docs_published, cpu_s=time.process_time() - cpu,
    )


def _read_all(paths: list[Path], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables([pq.read_table(p, schema=schema) for p in paths]) if paths else schema.empty_table()


def _counts_of(column: pa.ChunkedArray) -> dict[int, int]:
    values, counts = np.unique(column.to_numpy(), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def keep_first_copies(rows: pa.Table, files: list[str]) -> tuple[pa.Table, pa.Table]:
    """The dedupe policy, in one place. rows: INPUT_SCHEMA (valid rows only: an invalid copy never
    wins). -> (kept rows with id, content_hash, file_index, row; duplicates' quarantine rows).
    The first copy in input order (file_index, then row) is kept; each later copy is quarantined
    with a detail naming the kept copy's file and row and whether its text is the same."""
    order = pc.add(pc.multiply(pc.cast(rows.column("file_index"), pa.int64()), 1 << ROW_BITS), rows.column("row"))
    rows = rows.append_column("order", order)
    first = rows.group_by("id").aggregate([("order", "min")]).rename_columns(["id", "kept_order"])
    rows = rows.join(first, "id", join_type="left outer")
    is_dup = pc.not_equal(rows.column("order"), rows.column("kept_order"))
    kept = rows.filter(pc.invert(is_dup))
    dups = rows.filter(is_dup)
    quarantine = _duplicate_rows(dups, kept, files) if dups.num_rows else QUARANTINE_SCHEMA.empty_table()
    return kept.select(["id", "content_hash", "file_index", "row"]), quarantine


def _duplicate_rows(dups: pa.Table, kept: pa.Table, files: list[str]) -> pa.Table:
    kept_hash = kept.select(["id", "content_hash"]).rename_columns(["id", "kept_hash"])
    dups = dups.join(kept_hash, "id", join_type="left outer").sort_by("order")
    details = []
    for h, kept_h, kept_order in zip(dups.column("content_hash").to_pylist(), dups.column("kept_hash").to_pylist(),
                                     dups.column("kept_order").to_pylist()):
        where = f"{files[kept_order >> ROW_BITS]} row {kept_order & ROW_MASK}"
        same = "same text" if kept_h == h else "different text"
        details.append(f"kept the copy at {where}: the first valid copy in input order (files sorted by path); {same}")
    return pa.table({
        "id": dups.column("id"), "reason": pa.array([DUPLICATE_ID] * dups.num_rows, pa.string()),
        "detail": pa.array(details, pa.string()),
        "source_file": pa.array([files[i] for i in dups.column("file_index").to_pylist()], pa.string()),
        "source_row": dups.column("row"), "text_preview": pa.nulls(dups.num_rows, pa.string()),
    }, schema=QUARANTINE_SCHEMA)


@dataclass(frozen=True)
class Diff:
    """One partition's diff: what the model embeds, which stored rows are copied, what is deleted."""

    to_embed: pa.Table  # EMBED_SCHEMA, sorted by file and row
    reused: pa.Table  # REUSE_SCHEMA, sorted by source and row: every vector of each reused document
    deleted: int  # published documents no kept row has
    reused_docs: int
    reused_docs_published: int  # part of reused_docs: taken from the published version


def diff_against_stored(kept: pa.Table, stored: pa.Table, published_sources: int) -> Diff:
    """The incremental diff, in one place. kept: the deduped rows; stored: STORED_SCHEMA rows of
    every reusable stored vector (ranked by source: the published version's files first, file
    and row). A kept document whose (id, content_hash) is stored keeps its stored vectors, taken
    from the best-ranked version (`group`) that holds all of them: every passage of a chunked
    document (an interrupted run may have written only some), the one vector of an unchunked one.
    Every other kept document is embedded."""
    matched = stored.join(kept.select(["id", "content_hash"]), keys=["id", "content_hash"], join_type="inner")
    # each passage once per version (the best-ranked copy), then the versions that hold them all
    passages = matched.group_by(["id", "group", "chunk"]).aggregate([("rank", "min"), ("chunks", "max")])
    per_version = passages.group_by(["id", "group"]).aggregate([("chunk", "count"), ("chunks_max", "max")])
    whole = per_version.filter(pc.equal(per_version.column("chunk_count"), per_version.column("chunks_max_max")))
    best = whole.group_by("id").aggregate([("group", "min")]).rename_columns(["id", "group"])
    chosen = passages.join(best, keys=["id", "group"], join_type="inner")
    ranks = np.sort(chosen.column("rank_min").to_numpy()).astype(np.int64)
    vector_ids = stored.filter(pc.is_in(stored.column("rank"), value_set=pa.array(ranks)))
    vector_ids = vector_ids.sort_by("rank")  # aligned with `ranks`: both sorted, ranks are unique
    reused = pa.table({
        "source": pa.array(ranks >> ROW_BITS, pa.int32()), "row": pa.array(ranks & ROW_MASK, pa.int64()),
        "id": vector_ids.column("vector_id"),
    }, schema=REUSE_SCHEMA)
    to_embed = kept.join(best.select(["id"]), "id", join_type="left anti")
    to_embed = to_embed.select(EMBED_SCHEMA.names).cast(EMBED_SCHEMA)
    to_embed = to_embed.sort_by([("file_index", "ascending"), ("row", "ascending")])
    first_published = stored.filter(pc.less(stored.column("rank"), published_sources << ROW_BITS)).column("id")
    published_docs = pc.unique(first_published)
    deleted = int(pc.sum(pc.invert(pc.is_in(published_docs, value_set=kept.column("id")))).as_py() or 0)
    from_published = vector_ids.filter(pc.less(vector_ids.column("rank"), published_sources << ROW_BITS))
    return Diff(to_embed, reused, deleted, best.num_rows, len(pc.unique(from_published.column("id"))))


# ------------------------------------------------------------------ readers of the plan
def planned_rows_of_file(plan_dir: str, file_index: int) -> pa.Table:
    """(row, id, content_hash) the model embeds from one input file, sorted by row. Reads only the
    row groups whose statistics can hold the file (the embed files are sorted by file and row)."""
    folder = Path(plan_dir) / EMBED
    if not any(folder.glob("*.parquet")):
        return EMBED_SCHEMA.empty_table().select(["row", "id", "content_hash"])
    table = pq.read_table(folder, schema=EMBED_SCHEMA, filters=[("file_index", "=", file_index)],
                          columns=["row", "id", "content_hash"])
    return table.sort_by("row")


def reused_rows_of_source(plan_dir: str, source: int) -> np.ndarray:
    """Sorted row numbers of one stored vectors file that this run copies."""
    table = pq.read_table(Path(plan_dir) / REUSE, schema=REUSE_SCHEMA, filters=[("source", "=", source)],
                          columns=["row"])
    return np.sort(table.column("row").to_numpy())


def reused_ids(plan_dir: str, below_source: int) -> pa.Array:
    """Ids copied from sources below `below_source` (the published version's files): the index
    update keeps their faiss ids."""
    folder = Path(plan_dir) / REUSE
    if not any(folder.glob("*.parquet")):
        return pa.array([], pa.string())
    table = pq.read_table(folder, schema=REUSE_SCHEMA, filters=[("source", "<", below_source)], columns=["id"])
    return table.column("id").combine_chunks()


def merge_quarantine(plan_dir: str, out_path: str) -> int:
    """Stream every quarantine piece into one parquet file: scan rows in input order, then the
    duplicates. Returns the rows written."""
    folder = Path(plan_dir) / QUARANTINE
    pieces = sorted(folder.glob("scan-*.parquet")) + sorted(folder.glob("dup-*.parquet"))
    written = 0
    with pq.ParquetWriter(out_path, QUARANTINE_SCHEMA) as writer:
        for piece in pieces:
            for batch in pq.ParquetFile(piece).iter_batches():
                writer.write_table(pa.Table.from_batches([batch]).cast(QUARANTINE_SCHEMA))
                written += batch.num_rows
    return written
