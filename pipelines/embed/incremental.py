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
interrupted run. This module picks the sources (`reuse_sources`) and copies the chosen rows
(`copy_reused`, one Ray task per source file); the row-level diff itself runs per id partition
on the cluster (`plan_tasks.diff_against_stored`). Reuse needs the same `vector_identity` (encoder weights and settings,
instruction, text composition) and the same `store_text`: otherwise the source is ignored and
the run says why.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from .layout import OutputLayout, vector_files_of
from .manifest import missing_parts
from .plan_tasks import reused_rows_of_source

logger = logging.getLogger(__name__)

REUSED_FILE = "reused-00000.parquet"  # the first reused file; later ones count up (reused-00001, ...)
RUN_RECORD = "run.json"


@dataclass(frozen=True)
class ReuseSources:
    """Stored vectors files this run may copy from, ranked: the published version's files first
    (`--incremental` only), then those of interrupted runs, newest first."""

    files: tuple[str, ...] = ()
    versions: tuple[str, ...] = ()  # the version each file belongs to
    published_files: int = 0  # the first this many files are the published version's
    previous_dir: Path | None = None  # the published version, when its vectors are a source
    reason: str = ""  # why the published version is (not) a source
    repair: str = ""  # the published version lacks a part besides its vectors: publish anew, index rebuilt


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


# ------------------------------------------------------------------ sources
def reuse_sources(layout: OutputLayout, previous: str | None, identity: dict, store_text: bool, *,
                  incremental: bool) -> ReuseSources:
    files: list[str] = []
    versions: list[str] = []
    previous_dir, repair = None, ""
    if incremental:
        published, reason, repair = _published_source(layout, previous, identity, store_text)
        if published is not None:
            previous_dir = layout.version_dir(previous)
            files += [str(f) for f in published]
            versions += [previous] * len(published)
    else:
        reason = "full run (not --incremental): the published version's vectors are not reused"
    published_files = len(files)
    for name in _interrupted_runs(layout, previous, identity, store_text):
        found = vector_files_of(layout.version_dir(name))
        files += [str(f) for f in found]
        versions += [name] * len(found)
    return ReuseSources(tuple(files), tuple(versions), published_files, previous_dir, reason, repair)


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


def published_identity(layout: OutputLayout, previous: str | None) -> dict | None:
    """The published version's vector identity: what --plan-only diffs with, since it loads no model."""
    if previous is None:
        return None
    return layout.read_manifest(previous).get("vector_identity")


# ------------------------------------------------------------------ copying
def copy_reused(sources: ReuseSources, reused_by_source: dict[int, int], plan_dir: Path, vectors_dir: Path) -> int:
    """Copy the chosen stored rows into this version's vectors folder: one Ray task per source
    file (reused-00000.parquet, reused-00001.parquet, ...), nothing through the driver. Returns
    their tokens."""
    used = [s for s in sorted(reused_by_source) if reused_by_source[s]]
    if not used:
        return 0
    vectors_dir.mkdir(parents=True, exist_ok=True)
    refs = [_copy_task.remote(sources.files[s], s, str(plan_dir), str(vectors_dir / f"reused-{n:05d}.parquet"))
            for n, s in enumerate(used)]
    tokens = 0
    for source, (written, file_tokens) in zip(used, ray.get(refs)):
        if written != reused_by_source[source]:
            raise RuntimeError(f"expected to copy {reused_by_source[source]} stored vectors from "
                               f"{sources.files[source]} but found {written}: a source version changed during the run")
        tokens += file_tokens
    return tokens


def copy_rows(path: str, source: int, plan_dir: str, out_path: str, batch_rows: int = 16384) -> tuple[int, int]:
    """The planned rows of one stored vectors file -> out_path. Returns (rows, tokens)."""
    rows = reused_rows_of_source(plan_dir, source)
    written = tokens = 0
    start = 0
    with pq.ParquetWriter(out_path, pq.ParquetFile(path).schema_arrow) as writer:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            lo, hi = (int(i) for i in rows.searchsorted([start, start + batch.num_rows]))
            if hi > lo:
                table = pa.Table.from_batches([batch]).take(pa.array(rows[lo:hi] - start))
                writer.write_table(table)
                written += table.num_rows
                tokens += int(pc.sum(table.column("n_tokens")).as_py() or 0)
            start += batch.num_rows
    return written, tokens


_copy_task = ray.remote(num_cpus=1)(copy_rows)


def describe_reuse(sources: ReuseSources, previous: str | None, reused_published: int, deleted: int,
                   salvaged: int, salvaged_from: list[str]) -> str:
    """What the run decided about stored vectors, in words (manifest.incremental.decision)."""
    reason = sources.reason
    if sources.previous_dir is not None:
        reason = f"reusing {reused_published:,} unchanged vectors from {previous}; {deleted:,} ids deleted"
        if sources.repair:
            reason += f"; {sources.repair}"
    if salvaged:
        reason += f"; salvaging {salvaged:,} vectors an interrupted run wrote ({', '.join(salvaged_from)})"
    return reason
