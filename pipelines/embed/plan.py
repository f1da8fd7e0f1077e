"""The plan of a run, made on the cluster: which rows the model embeds, which stored vectors are
copied instead, which rows are quarantined and which published ids are deleted.

    scan (one Ray task per input file)       -> quarantine pieces + valid rows by id partition
    stored keys (one task per vectors file)  -> (id, content_hash, rank) by id partition
    resolve (one task per id partition)      -> dedupe, diff: plan/embed, plan/reuse, duplicates

Every row-sized result is parquet under the plan folder (`plan_tasks.py` owns its format and
holds the dedupe policy and the diff); the driver gets counts back and keeps a `PlanSummary`:
counts, file lists and the decisions in words. Its memory does not grow with the rows.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow as pa
import ray

from .. import faults
from .incremental import ReuseSources, describe_reuse
from .plan_tasks import (
    PLAN_FILE,
    PLAN_TASK_FAULT,
    PartitionResult,
    ScannedFile,
    StoredFile,
    fingerprint_file,
    resolve_partition,
    scan_to_partitions,
    stored_to_partitions,
)
from .scan import Columns, IdTypeError, MissingColumnsError

logger = logging.getLogger(__name__)

ROWS_PER_PARTITION = 1_000_000  # a resolve task holds about 0.3 KB per row of its partition
MAX_PARTITIONS = 1024


class BadFileError(RuntimeError):
    """A corrupt or unreadable parquet file."""


@dataclass(frozen=True)
class InputFile:
    path: str
    rows: int


@dataclass(frozen=True)
class BadFile:
    path: str
    error: str


@dataclass(frozen=True)
class PlanSummary:
    """What the driver knows of the plan: counts, file lists, decisions. Rows live in `plan_dir`."""

    plan_dir: Path
    partitions: int
    paths: tuple[str, ...]  # every input file, by file index (the plan's rows name files by index)
    files: tuple[InputFile, ...]  # readable input files, in input order
    bad_files: tuple[BadFile, ...]  # skipped with --skip-bad-files
    rows_read: int
    rows_planned: int  # embedded or reused: the new version's vectors
    rows_to_embed: int  # sent to the model
    rows_reused: int  # documents whose stored vectors are copied
    rows_reused_published: int  # part of rows_reused: from the published version (the rest is salvage)
    passages_reused: int  # stored vectors copied (= rows_reused unless the vectors are passages)
    rows_deleted: int  # published ids that no planned row has (--incremental)
    quarantine_by_reason: dict[str, int]
    quarantine_fingerprint: int  # order-free (plan_tasks.fingerprint): compares quarantines without reading them
    to_embed_by_file: tuple[int, ...]  # per input file index (bad files included, with 0)
    reused_by_source: dict[int, int]  # per index into sources.files
    sources: ReuseSources
    salvaged_from: tuple[str, ...]  # interrupted runs rows were taken from
    skipped_files: tuple[str, ...]  # unreadable vectors files of interrupted runs
    decision: str  # what was decided about stored vectors, in words
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def rows_quarantined(self) -> int:
        return sum(self.quarantine_by_reason.values())

    @property
    def rows_salvaged(self) -> int:
        return self.rows_reused - self.rows_reused_published

    def to_json(self) -> dict:
        """The summary as printed by --plan-only and written to plan/plan.json."""
        return {
            "plan_dir": str(self.plan_dir), "partitions": self.partitions,
            "rows_read": self.rows_read, "rows_to_embed": self.rows_to_embed, "rows_reused": self.rows_reused,
            "rows_salvaged": self.rows_salvaged, "rows_deleted": self.rows_deleted,
            "rows_quarantined": self.rows_quarantined, "quarantine_by_reason": dict(self.quarantine_by_reason),
            "rows_planned": self.rows_planned, "passages_reused": self.passages_reused,
            "files_read": len(self.files), "files_skipped": len(self.bad_files),
            "bad_files": [{"path": b.path, "error": b.error} for b in self.bad_files],
            "decision": self.decision, "salvaged_from": list(self.salvaged_from),
            "skipped_files": list(self.skipped_files), "seconds": dict(self.seconds),
        }


def choose_partitions(files: int, estimated_rows: int, requested: int | None = None) -> int:
    """Id partitions: about ROWS_PER_PARTITION rows each, at least one per input file (so the
    resolve step spreads like the scan), at least 2."""
    if requested:
        return requested
    return max(2, min(MAX_PARTITIONS, max(files, -(-estimated_rows // ROWS_PER_PARTITION))))


_scan_task = ray.remote(num_cpus=1)(scan_to_partitions)
_stored_task = ray.remote(num_cpus=1)(stored_to_partitions)
_resolve_task = ray.remote(num_cpus=1)(resolve_partition)
_fingerprint_task = ray.remote(num_cpus=1)(fingerprint_file)


def start_scan(files: list[str], columns: Columns, plan_dir: Path, partitions: int) -> list[ray.ObjectRef]:
    """Launch one scan task per input file (results: `ScannedFile`); `finish_plan` collects them."""
    return [_scan_task.remote(path, i, columns, str(plan_dir), partitions) for i, path in enumerate(files)]


def finish_plan(scan_refs: list[ray.ObjectRef], files: list[str], sources: ReuseSources, stored_schema: pa.Schema,
                plan_dir: Path, partitions: int, *, skip_bad_files: bool, previous: str | None,
                started: float) -> PlanSummary:
    """Partition the stored vectors' keys, wait for the scan, resolve every partition, and
    write plan.json. Raises on the input problems that stop a run (same rules as ever)."""
    groups = {version: g for g, version in enumerate(dict.fromkeys(sources.versions))}  # in rank order
    stored_refs = [_stored_task.remote(path, i, groups[version], stored_schema, str(plan_dir), partitions)
                   for i, (path, version) in enumerate(zip(sources.files, sources.versions))]
    scans: list[ScannedFile] = _wait(scan_refs, "scanned", "files")
    bad_files = _check_scans(scans, skip_bad_files)
    stored: list[StoredFile] = _wait(stored_refs, "read the keys of", "stored vectors files")
    skipped = _check_stored(stored, sources)
    scanned_s = time.perf_counter() - started
    logger.info("scan done in %.1f s: %d rows in %d files; resolving %d id partitions", scanned_s,
                sum(s.num_rows for s in scans), len(scans), partitions)
    paths = [s.path for s in scans]  # by file_index: the duplicates' details name the kept copy's file
    fault = faults.for_worker(PLAN_TASK_FAULT)
    resolve_refs = [_resolve_task.remote(p, str(plan_dir), paths, sources.published_files, fault)
                    for p in range(partitions)]
    parts: list[PartitionResult] = _wait(resolve_refs, "resolved", "id partitions")
    summary = _summarize(scans, bad_files, parts, sources, skipped, plan_dir, partitions, previous)
    summary = _with_seconds(summary, {
        "scan": round(scanned_s, 3), "resolve": round(time.perf_counter() - started - scanned_s, 3),
        # CPU seconds of the tasks, summed: the plan's cost, whatever else the cluster was doing
        "scan_cpu": round(sum(s.cpu_s for s in scans) + sum(s.cpu_s for s in stored), 3),
        "resolve_cpu": round(sum(p.cpu_s for p in parts), 3),
    })
    (plan_dir / PLAN_FILE).write_text(json.dumps(summary.to_json(), indent=2) + "\n")
    return summary


def published_quarantine(previous_dir: Path, quarantine_file: str) -> tuple[int, int]:
    """(rows, fingerprint) of the published quarantine, computed in a Ray task."""
    return ray.get(_fingerprint_task.remote(str(previous_dir / quarantine_file)))


def has_changes(summary: PlanSummary, published_quarantine: Callable[[], tuple[int, int]]) -> bool:
    """False when the input adds, changes and deletes nothing and quarantines the same rows for
    the same reasons (a count alone would miss one bad row replaced by another).
    `published_quarantine()`: the published quarantine's (rows, fingerprint), asked last."""
    if summary.sources.previous_dir is None or summary.sources.repair:
        return True  # nothing whole (of the same vector identity) to compare with
    if summary.rows_to_embed or summary.rows_salvaged or summary.rows_deleted:
        return True
    return (summary.rows_quarantined, summary.quarantine_fingerprint) != published_quarantine()


# ------------------------------------------------------------------ internals
def _wait(refs: list[ray.ObjectRef], verb: str, what: str) -> list:
    pending, done, start = list(refs), 0, time.perf_counter()
    while pending:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=10.0)
        done += len(ready)
        if pending:
            logger.info("%s %d/%d %s (%.0f s)", verb, done, len(refs), what, time.perf_counter() - start)
    return ray.get(refs)


def _check_scans(scans: list[ScannedFile], skip_bad_files: bool) -> list[BadFile]:
    # Schema problems stop the run even with --skip-bad-files: skipping would drop good data silently.
    for key, error in (("missing_columns", MissingColumnsError), ("bad_id_type", IdTypeError)):
        found = [getattr(s, key) for s in scans if getattr(s, key)]
        if found:
            raise error(found[0] + (f" ({len(found)} files have this problem)" if len(found) > 1 else ""))
    bad = [BadFile(s.path, s.error) for s in scans if s.error]
    if bad and not skip_bad_files:
        raise BadFileError(
            f"cannot read {bad[0].path}: {bad[0].error}"
            + (f" (and {len(bad) - 1} more unreadable files)" if len(bad) > 1 else "")
            + ". Fix or remove it, or pass --skip-bad-files to skip unreadable files (they are listed in the manifest)."
        )
    if bad and len(bad) == len(scans):
        # publishing an empty version (and, incrementally, deleting every document) is never what
        # a night with an unreachable bucket wants
        raise BadFileError(f"none of the {len(bad)} input files can be read (first: {bad[0].path}: "
                           f"{bad[0].error}); nothing was published")
    for item in bad:
        logger.warning("skipping unreadable file %s: %s", item.path, item.error)
    return bad


def _check_stored(stored: list[StoredFile], sources: ReuseSources) -> list[str]:
    """A published vectors file that cannot be used stops the run; an interrupted run's is skipped."""
    skipped = []
    for item in stored:
        if item.error is None:
            continue
        if item.source < sources.published_files:
            raise RuntimeError(f"cannot reuse {item.path} of the published version: {item.error}. Run without "
                               f"--incremental to re-embed everything")
        logger.warning("not salvaging %s: %s", item.path, item.error)
        skipped.append(item.path)
    return skipped


def _summarize(scans: list[ScannedFile], bad_files: list[BadFile], parts: list[PartitionResult],
               sources: ReuseSources, skipped: list[str], plan_dir: Path, partitions: int,
               previous: str | None) -> PlanSummary:
    by_reason: dict[str, int] = {}
    for s in scans:
        for reason, n in s.quarantined.items():
            by_reason[reason] = by_reason.get(reason, 0) + n
    duplicates = sum(p.duplicates for p in parts)
    if duplicates:
        by_reason["duplicate_id"] = by_reason.get("duplicate_id", 0) + duplicates
    to_embed_by_file = [0] * len(scans)
    reused_by_source: dict[int, int] = {}
    for p in parts:
        for f, n in p.to_embed_by_file.items():
            to_embed_by_file[f] += n
        for s, n in p.reused_by_source.items():
            reused_by_source[s] = reused_by_source.get(s, 0) + n
    reused = sum(p.reused_docs for p in parts)
    reused_published = sum(p.reused_docs_published for p in parts)
    salvaged_from = tuple(dict.fromkeys(sources.versions[s] for s in sorted(reused_by_source)
                                        if s >= sources.published_files))
    deleted = sum(p.deleted for p in parts)
    fingerprint = (sum(s.fingerprint for s in scans) + sum(p.fingerprint for p in parts)) % (1 << 64)
    decision = describe_reuse(sources, previous, reused_published, deleted, reused - reused_published,
                              list(salvaged_from))
    return PlanSummary(
        plan_dir=plan_dir, partitions=partitions, paths=tuple(s.path for s in scans),
        files=tuple(InputFile(s.path, s.num_rows) for s in scans if not s.error),
        bad_files=tuple(bad_files),
        rows_read=sum(s.num_rows for s in scans),
        rows_planned=sum(p.kept for p in parts),
        rows_to_embed=sum(to_embed_by_file),
        rows_reused=reused, rows_reused_published=reused_published, rows_deleted=deleted,
        passages_reused=sum(reused_by_source.values()),
        quarantine_by_reason=by_reason, quarantine_fingerprint=fingerprint,
        to_embed_by_file=tuple(to_embed_by_file), reused_by_source=reused_by_source,
        sources=sources, salvaged_from=salvaged_from, skipped_files=tuple(skipped), decision=decision,
    )


def _with_seconds(summary: PlanSummary, seconds: dict[str, float]) -> PlanSummary:
    return replace(summary, seconds=seconds)
