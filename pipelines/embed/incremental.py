"""Reusing stored vectors instead of running the model: the published version's (`--incremental`)
and the ones an interrupted run already wrote (salvage).

Published version (`--incremental` only): a document whose (id, content_hash) is already there
keeps its stored vector; a new id or a changed text is embedded; an id that is gone from the
input is left out of the new version (and so of its index).

Salvage (every run): a run killed mid-way leaves an unpublished version folder whose `run.json`
(written before any embedding) records the `vector_identity` and `store_text` it embedded with.
The next run takes the vectors of every readable parquet file in such folders newer than the
published version, when the identity and store_text are equal, for the rows whose
(id, content_hash) match the current input. A full run salvages too: the interrupted attempt was
this same full run, and an equal identity and content_hash give the same vector, so the result
equals an uninterrupted run; a full run still never takes the *published* version's vectors.

Each id is taken at most once: from the published version first, then from the newest
interrupted run. Reuse needs the same `vector_identity` (encoder weights and settings,
instruction, text composition) and the same `store_text`: otherwise the source is ignored and
the run says why.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .layout import QUARANTINE_FILE, OutputLayout
from .manifest import missing_parts
from .scan import Plan

logger = logging.getLogger(__name__)

REUSED_FILE = "reused-00000.parquet"
RUN_RECORD = "run.json"
_ROW_BITS = 40  # a candidate row's rank: (file number << 40) + row, so files sort first


@dataclass
class Reuse:
    """Rows to copy instead of embedding, and what the run decided."""

    files: list[Path] = field(default_factory=list)  # every vectors file rows are copied from
    rows_by_file: list[np.ndarray] = field(default_factory=list)  # sorted row numbers to copy, per file
    # taken from the published version
    published_ids: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    previous_dir: Path | None = None  # the published version, when its vectors are a source
    rows_deleted: int = 0
    reason: str = ""
    salvaged_from: list[str] = field(default_factory=list)  # interrupted runs that rows were taken from
    skipped_files: list[str] = field(default_factory=list)  # unreadable files of interrupted runs
    repair: str = ""  # the published version lacks a part besides its vectors: publish anew, index rebuilt

    @property
    def rows(self) -> int:
        return int(sum(len(r) for r in self.rows_by_file))

    @property
    def rows_salvaged(self) -> int:
        return self.rows - len(self.published_ids)


@dataclass
class _Source:
    name: str  # the version
    files: list[Path]
    published: bool


# ------------------------------------------------------------------ the run record
def write_run_record(version_dir: Path, identity: dict, store_text: bool) -> None:
    """Written before embedding: lets a later run decide whether this run's vectors are reusable."""
    record = {"vector_identity": identity, "store_text": store_text, "pid": os.getpid(), "host": socket.gethostname(),
              "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    tmp = version_dir / f".{RUN_RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, version_dir / RUN_RECORD)


def _read_run_record(version_dir: Path) -> dict | None:
    try:
        return json.loads((version_dir / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return None  # killed before the record was whole: nothing of that run is trusted


# ------------------------------------------------------------------ planning
def plan_reuse(plan: Plan, layout: OutputLayout, previous: str | None, identity: dict, store_text: bool,
               schema: pa.Schema, *, incremental: bool) -> Reuse:
    """Take the reusable rows out of `plan.keep` (they will not be read or embedded)."""
    reuse = Reuse()
    sources: list[_Source] = []
    if incremental:
        published, reuse.reason, reuse.repair = _published_source(layout, previous, identity, store_text)
        if published is not None:
            reuse.previous_dir = layout.version_dir(previous)
            sources.append(_Source(previous, published, published=True))
    else:
        reuse.reason = "full run (not --incremental): the published version's vectors are not reused"
    for name in _interrupted_runs(layout, previous, identity, store_text):
        sources.append(_Source(name, vector_files_of(layout.version_dir(name)), published=False))
    candidates, owners = _candidates(sources, schema, reuse)
    _choose(plan, candidates, sources, reuse)
    reuse.salvaged_from = list(dict.fromkeys(
        owner.name for owner, rows in zip(owners, reuse.rows_by_file) if len(rows) and not owner.published))
    if reuse.previous_dir is not None:
        reuse.rows_deleted = _deleted(candidates, plan, sources)
        reuse.reason = (f"reusing {len(reuse.published_ids):,} unchanged vectors from {previous}; "
                        f"{reuse.rows_deleted:,} ids deleted")
        if reuse.repair:
            reuse.reason += f"; {reuse.repair}"
    if reuse.rows_salvaged:
        reuse.reason += (f"; salvaging {reuse.rows_salvaged:,} vectors an interrupted run wrote "
                         f"({', '.join(reuse.salvaged_from)})")
    return reuse


def _published_source(layout: OutputLayout, previous: str | None, identity: dict,
                      store_text: bool) -> tuple[list[Path] | None, str, str]:
    """(the published vectors files to reuse or None, why, what needs repair). A published
    version missing a part is never trusted as it is: whole vectors are reused and the rest
    rebuilt into a new version; damaged vectors are embedded again."""
    if previous is None:
        return None, "no published version yet: embedding everything", ""
    manifest = layout.read_manifest(previous)
    if manifest.get("vector_identity") != identity:
        changed = sorted(k for k in identity if manifest.get("vector_identity", {}).get(k) != identity[k])
        return None, (f"the published version {previous} was made with a different {', '.join(changed)}: "
                      f"re-embedding everything"), ""
    if ("text" in manifest["vectors"]["columns"]) != store_text:
        return None, f"store_text changed since {previous}: re-embedding everything", ""
    damaged_vectors, missing = missing_parts(layout.version_dir(previous), manifest)
    if damaged_vectors:
        logger.warning("the published version %s is damaged: %s", previous, "; ".join(damaged_vectors + missing))
        return None, (f"the published version {previous} is damaged ({'; '.join(damaged_vectors)}): "
                      f"re-embedding everything"), ""
    repair = ""
    if missing:
        repair = f"the published version {previous} is incomplete ({', '.join(missing)}): publishing a whole new one"
        logger.warning(repair)
    return vector_files_of(layout.version_dir(previous)), "", repair


def _interrupted_runs(layout: OutputLayout, previous: str | None, identity: dict, store_text: bool) -> list[str]:
    """Unpublished versions newer than the published one whose run record matches, newest first."""
    found = []
    for name in reversed(layout.versions()):
        if previous is not None and name <= previous:
            break
        record = _read_run_record(layout.version_dir(name))
        if record is None:
            continue
        if record.get("vector_identity") != identity or record.get("store_text") != store_text:
            logger.info("not salvaging %s: it was embedded with another vector identity or store_text", name)
            continue
        found.append(name)
    return found


def vector_files_of(version_dir: Path) -> list[Path]:
    return sorted((version_dir / "vectors").glob("*.parquet"))


def _candidates(sources: list[_Source], schema: pa.Schema, reuse: Reuse) -> tuple[pa.Table, list[_Source]]:
    """(id, content_hash, rank) of every stored row, ranked by source, file and row; fills
    `reuse.files` with the readable files and returns the source of each."""
    tables, owners = [], []
    for source in sources:
        for path in source.files:
            table = _read_keys(path, schema, strict=source.published, reuse=reuse)
            if table is None:
                continue
            rank = (len(reuse.files) << _ROW_BITS) + np.arange(table.num_rows, dtype=np.int64)
            tables.append(table.append_column("rank", pa.array(rank)))
            reuse.files.append(path)
            owners.append(source)
    if not tables:
        empty = pa.table({"id": pa.array([], pa.string()), "content_hash": pa.array([], pa.string()),
                          "rank": pa.array([], pa.int64())})
        return empty, owners
    return pa.concat_tables(tables), owners


def _read_keys(path: Path, schema: pa.Schema, *, strict: bool, reuse: Reuse) -> pa.Table | None:
    """(id, content_hash) of one vectors file. A file of an interrupted run that cannot be read
    (the kill came before its footer was written) or has another schema is skipped."""
    try:
        parquet = pq.ParquetFile(path)
        if not parquet.schema_arrow.equals(schema, check_metadata=False):
            raise ValueError(f"its schema {parquet.schema_arrow} is not the expected {schema}")
        return parquet.read(columns=["id", "content_hash"])
    except Exception as err:  # noqa: BLE001 - any reader failure means the file is unusable
        if strict:
            raise RuntimeError(f"cannot reuse {path} of the published version: {err}. Run without --incremental "
                               f"to re-embed everything") from err
        logger.warning("not salvaging %s: %s", path, err)
        reuse.skipped_files.append(str(path))
        return None


def _choose(plan: Plan, candidates: pa.Table, sources: list[_Source], reuse: Reuse) -> None:
    """For each planned row, the best-ranked stored row with the same (id, content_hash)."""
    matched = candidates.join(plan.kept.select(["id", "content_hash"]), keys=["id", "content_hash"], join_type="inner")
    best = matched.group_by("id").aggregate([("rank", "min")]).rename_columns(["id", "rank"])
    ranks = best.column("rank").to_numpy()
    file_of, row_of = ranks >> _ROW_BITS, ranks & ((1 << _ROW_BITS) - 1)
    reuse.rows_by_file = [np.sort(row_of[file_of == f]) for f in range(len(reuse.files))]
    reuse.published_ids = _published_rows(best, sources).column("id").combine_chunks()
    taken = plan.kept.join(best.select(["id"]), keys="id", join_type="inner")
    for file_index, row in zip(taken.column("file_index").to_numpy(), taken.column("row").to_numpy()):
        plan.keep[file_index][row] = False


def _published_rows(table: pa.Table, sources: list[_Source]) -> pa.Table:
    """The rows of `table` (with a rank column) that come from the published version, which is
    always the first source."""
    published_files = sum(len(s.files) for s in sources if s.published)
    return table.filter(pc.less(table.column("rank"), published_files << _ROW_BITS))


def _deleted(candidates: pa.Table, plan: Plan, sources: list[_Source]) -> int:
    """Ids of the published version that are not in this run's planned rows."""
    published_ids = _published_rows(candidates, sources).column("id")
    return int(pc.sum(pc.invert(pc.is_in(published_ids, value_set=plan.kept.column("id")))).as_py() or 0)


# ------------------------------------------------------------------ copying
def copy_reused(reuse: Reuse, vectors_dir: Path) -> int:
    """Stream the chosen rows of other versions into this version's REUSED_FILE; returns their
    tokens."""
    if not reuse.rows:
        return 0
    vectors_dir.mkdir(parents=True, exist_ok=True)
    written = tokens = 0
    writer = None
    try:
        for path, rows in zip(reuse.files, reuse.rows_by_file):
            for table in _rows_of(path, rows):
                if writer is None:
                    writer = pq.ParquetWriter(vectors_dir / REUSED_FILE, table.schema)
                writer.write_table(table)
                written += table.num_rows
                tokens += int(pc.sum(table.column("n_tokens")).as_py() or 0)
    finally:
        if writer is not None:
            writer.close()
    if written != reuse.rows:
        raise RuntimeError(f"expected to copy {reuse.rows} stored vectors but found {written}: "
                           f"a source version changed during the run")
    return tokens


def _rows_of(path: Path, rows: np.ndarray, batch_rows: int = 16384):
    """The given (sorted) rows of one parquet file, batch by batch."""
    if not len(rows):
        return
    start = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        lo, hi = np.searchsorted(rows, [start, start + batch.num_rows])
        if hi > lo:
            yield pa.Table.from_batches([batch]).take(pa.array(rows[lo:hi] - start))
        start += batch.num_rows


def has_changes(plan: Plan, reuse: Reuse) -> bool:
    """False when the input adds, changes and deletes nothing and quarantines the same rows."""
    if reuse.previous_dir is None or reuse.repair:  # nothing whole (of the same vector identity) to compare with
        return True
    nothing_to_embed = not any(k.any() for k in plan.keep)
    if not nothing_to_embed or reuse.rows_salvaged or reuse.rows_deleted:
        return True
    return not _same_quarantine(plan.quarantine, reuse.previous_dir / QUARANTINE_FILE)


def _same_quarantine(quarantine: pa.Table, published: Path) -> bool:
    """The same rows quarantined for the same reasons (a count alone would miss one bad row
    replaced by another)."""
    key = ["source_file", "source_row", "id", "reason"]
    if not published.exists():
        return quarantine.num_rows == 0
    before = pq.read_table(published, columns=key)
    if before.num_rows != quarantine.num_rows:
        return False
    order = [("source_file", "ascending"), ("source_row", "ascending")]
    return before.sort_by(order).equals(quarantine.select(key).sort_by(order))
