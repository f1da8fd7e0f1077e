"""One embedding run, top to bottom: scan -> plan -> embed -> index -> manifest -> publish.

    from pipelines.embed import EmbedConfig, run_embed
    result = run_embed(EmbedConfig(input=["corpus/"], output="out/index"))

A crash anywhere before `publish` leaves the previously published version as it was; the next
run salvages the vectors the crashed one already wrote (`incremental.py`) and prunes its folder
once the new version is published.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow.parquet as pq
import ray

from .. import faults
from ..sources import list_parquet_files
from .batch_udfs import INPUT_CHANGED, count_documents, read_actor_stats, vectors_schema
from .config import EmbedConfig
from .dataflow import (
    EncoderInfo,
    Placement,
    describe_encoder,
    effective_instruction,
    embed_planned_rows,
    ensure_ray,
    placement,
)
from .incremental import ReuseSources, copy_reused, published_identity, reuse_sources, write_run_record
from .index_build import BuiltIndex
from .index_shards import build_index_on_workers, update_index_on_worker
from .index_update import plan_index_update
from .layout import QUARANTINE_FILE, DamagedOutputError, OutputLayout, sync_tree, vector_files_of
from .manifest import build_manifest, vector_identity
from .plan import PlanSummary, choose_partitions, finish_plan, has_changes, published_quarantine, start_scan
from .plan_tasks import QUARANTINE, SHUFFLE, merge_quarantine, reused_ids
from .preflight import check_room_for_text
from .scan import Columns, check_columns, open_parquet

logger = logging.getLogger(__name__)

PLAN_DIR = "plan"  # in the version folder: the plan's parquet (plan_tasks.py) and plan.json
PLAN_SCRATCH = (SHUFFLE, QUARANTINE)  # removed before publishing; plan/embed, plan/reuse, plan.json stay


class WouldDeleteEverythingError(ValueError):
    """An incremental run found no document to embed while the published version holds some."""


@dataclass
class EmbedResult:
    version: str
    version_dir: Path
    manifest: dict
    published: bool = True  # False: an incremental run found no changes, or --plan-only
    run_counts: dict | None = None  # this run's counts when it published nothing (else the manifest's)
    plan: PlanSummary | None = None

    @property
    def counts(self) -> dict:
        return self.run_counts if self.run_counts is not None else self.manifest["counts"]


def run_embed(cfg: EmbedConfig) -> EmbedResult:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    layout = OutputLayout(cfg.output)
    columns = Columns(cfg.id_column, cfg.text_column, cfg.title_column)
    files = list_parquet_files(cfg.input)
    first_rows = _check_first_file(files[0], columns)
    if not cfg.plan_only:
        check_room_for_text(cfg)
    with layout.lock():
        ensure_ray()
        previous = _published(layout, cfg.incremental)
        where = encoder_ref = None
        if not cfg.plan_only:  # the model loads (in a task) while the files are scanned
            where = placement(cfg)
            encoder_ref = describe_encoder(cfg, where)
        version, version_dir = layout.new_version()
        try:
            plan, encoder, identity = _plan(cfg, layout, previous, files, columns, first_rows, version_dir,
                                            encoder_ref)
            ray.get(_merge_quarantine_task.remote(str(plan.plan_dir), str(version_dir / QUARANTINE_FILE)))
        except BaseException:
            shutil.rmtree(version_dir, ignore_errors=True)  # nothing in it is reusable yet (no run record)
            raise
        timings["scan"] = _lap(started, timings)
        logger.info("%d rows read: %d to embed, %d reused, %d quarantined%s", plan.rows_read, plan.rows_to_embed,
                    plan.rows_reused, plan.rows_quarantined,
                    f", {plan.rows_deleted} deleted" if plan.sources.previous_dir else "")
        _log_reuse(cfg, plan)
        faults.point("after_scan")
        if cfg.plan_only:
            print(format_plan(plan, version_dir))
            return EmbedResult(version, version_dir, {}, published=False, run_counts=_plan_counts(plan), plan=plan)
        if cfg.incremental and previous and plan.rows_planned == 0:
            _refuse_to_delete_everything(layout, previous, plan, version_dir)
        if cfg.incremental and previous and not has_changes(plan, _published_quarantine(plan)):
            print(f"no changes since the published version {previous}: nothing embedded, nothing published")
            shutil.rmtree(version_dir, ignore_errors=True)
            layout.prune(cfg.keep_versions)  # leftovers of interrupted runs: nothing in them is needed
            manifest = layout.read_manifest(previous)
            return EmbedResult(previous, layout.version_dir(previous), manifest, published=False,
                               run_counts=_unchanged_counts(plan, manifest["counts"]), plan=plan)
        if plan.rows_planned == 0:
            logger.warning("no document to embed (%d rows read, %d quarantined): publishing a version with no "
                           "vectors, and the quarantine", plan.rows_read, plan.rows_quarantined)

        write_run_record(version_dir, identity, cfg.store_text)  # before any vector: makes them salvageable
        vectors_dir = version_dir / "vectors"
        embed_seconds = _embed(plan, cfg, encoder, where, vectors_dir, version_dir / "_stats")
        reused_tokens = copy_reused(plan.sources, plan.reused_by_source, plan.plan_dir, vectors_dir)
        written = _check_vector_count(plan, version_dir, chunked=cfg.chunking is not None)
        timings["embed"] = _lap(started, timings)
        faults.point("after_vectors")

        built = _index(cfg, version_dir, encoder.dim, plan, written)
        timings["index"] = _lap(started, timings)
        faults.point("after_index")

        counts = _counts(plan, built, chunked=cfg.chunking is not None)
        stats = read_actor_stats(version_dir / "_stats")
        shutil.rmtree(version_dir / "_stats", ignore_errors=True)
        _drop_plan_scratch(plan.plan_dir)
        tokens = built.tokens - reused_tokens  # embedded by this run
        throughput = {
            "tokens": tokens,
            "embed_stage_s": round(embed_seconds, 3),
            "tokens_per_s": round(tokens / embed_seconds, 1) if embed_seconds else None,
            "actor_busy_tokens_per_s": round(stats["tokens"] / stats["busy_s"], 1) if stats["busy_s"] else None,
            "padding_share": round(stats["padding_share"], 4),
            "actors": where.actors, "device": where.device, "rows_per_actor": sorted(stats["rows_per_actor"]),
            "actor_starts": stats["actors"],  # above `actors`: Ray restarted embed actors and retried their batches
        }
        if stats["actors"] > where.actors:
            logger.warning("embed actors started %d times for a pool of %d: Ray restarted lost actors and "
                           "retried their batches", stats["actors"], where.actors)
        timings["total"] = round(time.perf_counter() - started, 3)
        manifest = build_manifest(
            version=version, previous=previous, cfg=cfg, encoder=encoder,
            instruction=effective_instruction(cfg, encoder), plan=plan, counts=counts,
            index_info=built.info, throughput=throughput, timings=timings,
        )
        manifest["incremental"] = {"enabled": cfg.incremental, "decision": plan.decision}
        manifest["salvage"] = {"rows": plan.rows_salvaged, "from_versions": list(plan.salvaged_from),
                               "skipped_files": list(plan.skipped_files)}
        manifest["plan"] = {"dir": PLAN_DIR, "partitions": plan.partitions, "seconds": plan.seconds}
        sync_tree(version_dir)
        layout.write_manifest(version, manifest)  # last: marks the version complete
        faults.point("before_publish")
        layout.publish(version)
        layout.prune(cfg.keep_versions, writing=version)
    result = EmbedResult(version, version_dir, manifest, plan=plan)
    print(format_summary(result, layout.root))
    return result


_merge_quarantine_task = ray.remote(num_cpus=1)(merge_quarantine)


def _plan(cfg: EmbedConfig, layout: OutputLayout, previous: str | None, files: list[str], columns: Columns,
          first_rows: int, version_dir: Path,
          encoder_ref) -> tuple[PlanSummary, EncoderInfo | None, dict | None]:
    """Scan, dedupe and diff on the cluster -> (the plan's summary, the encoder, the vector identity).
    With --plan-only no model loads: the diff takes the published version's vector identity (what
    a run with the same encoder and settings would find)."""
    started = time.perf_counter()
    partitions = choose_partitions(len(files), first_rows * len(files), cfg.plan_partitions)
    plan_dir = version_dir / PLAN_DIR
    logger.info("scanning %d file(s) into %d id partitions", len(files), partitions)
    scan_refs = start_scan(files, columns, plan_dir, partitions)
    encoder = None
    if encoder_ref is not None:
        encoder = ray.get(encoder_ref)
        if encoder.chunking_problem:
            raise ValueError(f"--chunk-tokens {cfg.chunk_tokens} --chunk-overlap {cfg.chunk_overlap}: "
                             f"{encoder.chunking_problem}")
        identity = vector_identity(encoder.identity, encoder.dtype, effective_instruction(cfg, encoder),
                                   cfg.title_column, cfg.chunking)
        dim = encoder.dim
    else:
        identity = published_identity(layout, previous)
        dim = layout.read_manifest(previous)["vectors"]["dim"] if identity else 0
    if identity is None:
        sources = ReuseSources(reason="--plan-only without a published version: nothing to reuse (interrupted "
                                      "runs' vectors are matched by the encoder, which --plan-only does not load)")
    else:
        sources = reuse_sources(layout, previous, identity, cfg.store_text, incremental=cfg.incremental)
    stored_schema = vectors_schema(dim, cfg.store_text, cfg.chunking is not None)
    plan = finish_plan(scan_refs, files, sources, stored_schema, plan_dir, partitions,
                       skip_bad_files=cfg.skip_bad_files, previous=previous, started=started)
    return plan, encoder, identity


def _published_quarantine(plan: PlanSummary) -> Callable[[], tuple[int, int]]:
    return lambda: published_quarantine(plan.sources.previous_dir, QUARANTINE_FILE)


def _embed(plan: PlanSummary, cfg: EmbedConfig, encoder: EncoderInfo, where: Placement, vectors_dir: Path,
           stats_dir: Path) -> float:
    try:
        return embed_planned_rows(plan, cfg, encoder, where, vectors_dir, stats_dir)
    except Exception as err:
        if INPUT_CHANGED in _messages(err):
            # the read stage found a file rewritten since the scan: say so plainly, not as a Ray traceback
            message = next(line for line in _messages(err).splitlines() if INPUT_CHANGED in line)
            raise RuntimeError(message[message.index(INPUT_CHANGED):]) from None
        raise


def _messages(err: BaseException) -> str:
    seen, parts = set(), []
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        parts.append(str(err))
        err = err.__cause__ or err.__context__
    return "\n".join(parts)


def _check_vector_count(plan: PlanSummary, version_dir: Path, *, chunked: bool) -> int:
    """The vectors files hold exactly the planned documents (unchunked: their footers' row counts;
    chunked: each document once with all of its passages, counted by a Ray task per file).
    Returns the vectors written."""
    files = vector_files_of(version_dir)
    if not chunked:
        written = docs = expected = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    else:
        counted = ray.get([_count_documents_task.remote(str(f)) for f in files])
        written, docs, expected = (sum(c[i] for c in counted) for i in range(3))
    if docs != plan.rows_planned or written != expected:
        passages = f" in {written:,} passages (their documents list {expected:,})" if chunked else ""
        raise RuntimeError(f"{INPUT_CHANGED}: {docs:,} documents written{passages} for {plan.rows_planned:,} "
                           f"planned; nothing was published: run again once the input is stable")
    return written


_count_documents_task = ray.remote(num_cpus=1)(count_documents)


def _drop_plan_scratch(plan_dir: Path) -> None:
    """The shuffle and the quarantine pieces were only needed to make the plan."""
    for name in PLAN_SCRATCH:
        shutil.rmtree(plan_dir / name, ignore_errors=True)


def _published(layout: OutputLayout, incremental: bool) -> str | None:
    """The published version. A full run needs nothing from it, so a damaged CURRENT only
    stops an incremental run (the error names the file and says a full run recovers)."""
    try:
        name = layout.current()
        if incremental and name:
            layout.read_manifest(name)  # unreadable: stop now, before the encoder loads and the scan runs
        return name
    except DamagedOutputError as err:
        if incremental:
            raise
        logger.warning("%s; this full run replaces it", err)
        return None


def _refuse_to_delete_everything(layout: OutputLayout, previous: str, plan: PlanSummary, report_dir: Path) -> None:
    """An empty export (or one whose every row is rejected) is far more often a broken upstream
    step than a corpus that really became empty: an incremental run refuses to delete every
    document. The quarantine stays in this run's unpublished folder (pruned by the next run) so
    the user can see why each row was rejected."""
    published = layout.read_manifest(previous)["index"]["count"]
    if not published:
        return  # nothing to lose: an empty corpus stays empty
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(plan.quarantine_by_reason.items())) or "none"
    raise WouldDeleteEverythingError(
        f"the input has no document to embed ({plan.rows_read:,} rows read, {plan.rows_quarantined:,} "
        f"quarantined: {reasons}) but the published version {previous} holds {published:,}: this --incremental "
        f"run would delete all {published:,} documents, so nothing was published. The rejected rows, each with "
        f"its reason: {report_dir / QUARANTINE_FILE} (kept until the next run). If the corpus really is empty "
        f"now, run without --incremental to publish an empty version"
    )


def _log_reuse(cfg: EmbedConfig, plan: PlanSummary) -> None:
    if cfg.incremental:
        logger.warning("incremental: %s", plan.decision)
    if plan.rows_salvaged:
        logger.warning("salvaged %d vectors written by interrupted run(s) %s (same vector identity): not embedding "
                       "them again", plan.rows_salvaged, ", ".join(plan.salvaged_from))
    if plan.skipped_files:
        logger.warning("skipped %d unreadable vectors file(s) of interrupted runs (cut off mid-write)",
                       len(plan.skipped_files))


def _index(cfg: EmbedConfig, version_dir: Path, dim: int, plan: PlanSummary, vectors: int) -> BuiltIndex:
    """Update the previous IVF index in place when the change is small, else build afresh.
    `vectors`: how many the new version holds (passages, when documents are split)."""
    sources = plan.sources
    previous_index = None if sources.repair else sources.previous_dir  # an incomplete version's index is not used
    kept = sum(n for s, n in plan.reused_by_source.items() if s < sources.published_files)
    update, why = plan_index_update(previous_index, kept, vectors, dim, cfg.index, cfg.index_memory_bytes)
    if sources.repair:
        why = sources.repair
    settings = {"recall_queries": cfg.recall_queries, "recall_target": cfg.recall_target, "seed": cfg.seed}
    if update:
        kept_ids = partial(reused_ids, str(plan.plan_dir), sources.published_files)  # read on the worker
        return update_index_on_worker(version_dir, version_dir / "vectors", sources.previous_dir, kept_ids, dim,
                                      built_because=why, **settings)
    if sources.previous_dir is not None:
        logger.info("index: rebuilding (%s)", why)
    requested = cfg.index if plan.rows_planned else "flat"  # nothing to train an IVF index on
    return build_index_on_workers(version_dir, version_dir / "vectors", dim, requested=requested,  # Ray tasks
                                  memory_budget=cfg.index_memory_bytes, built_because=why, **settings)


def _check_first_file(uri: str, columns: Columns) -> int:
    """Fail on missing columns before starting anything (every file is checked again by the scan).
    Returns its row count (from the footer), which sizes the plan's partitions."""
    try:
        parquet = open_parquet(uri)
        schema = parquet.schema_arrow
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the scan, with --skip-bad-files honoured
        return 0
    check_columns(uri, schema, columns)
    return parquet.metadata.num_rows


def _unchanged_counts(plan: PlanSummary, published: dict) -> dict:
    """What a run that found nothing to do reports: everything reused, nothing embedded."""
    return {
        "rows_read": plan.rows_read, "rows_embedded": 0, "rows_reused": plan.rows_reused, "rows_salvaged": 0,
        "rows_deleted": 0, "rows_quarantined": plan.rows_quarantined,
        "quarantine_by_reason": dict(plan.quarantine_by_reason), "rows_truncated": published["rows_truncated"],
        "files_read": len(plan.files), "files_skipped": len(plan.bad_files),
    } | ({"passages_embedded": 0, "passages_reused": plan.passages_reused} if "passages_reused" in published else {})


def _plan_counts(plan: PlanSummary) -> dict:
    """What --plan-only reports: what the run would do."""
    return {
        "rows_read": plan.rows_read, "rows_embedded": plan.rows_to_embed, "rows_reused": plan.rows_reused,
        "rows_salvaged": plan.rows_salvaged, "rows_deleted": plan.rows_deleted,
        "rows_quarantined": plan.rows_quarantined, "quarantine_by_reason": dict(plan.quarantine_by_reason),
        "files_read": len(plan.files), "files_skipped": len(plan.bad_files),
    }


def _counts(plan: PlanSummary, built: BuiltIndex, *, chunked: bool) -> dict:
    """The manifest's counts: documents (rows_*), and passages when documents are split."""
    if not chunked and built.count != plan.rows_planned:
        raise RuntimeError(
            f"{plan.rows_planned} rows were planned (embedded or reused) but the vectors hold {built.count}: "
            f"refusing to publish an incomplete version"
        )
    counts = {
        "rows_read": plan.rows_read,
        "rows_embedded": plan.rows_planned - plan.rows_reused,
        "rows_reused": plan.rows_reused,
        "rows_salvaged": plan.rows_salvaged,  # part of rows_reused: written by an interrupted run
        "rows_deleted": plan.rows_deleted,
        "rows_quarantined": plan.rows_quarantined,
        "quarantine_by_reason": dict(plan.quarantine_by_reason),
        "rows_truncated": built.truncated,
        "files_read": len(plan.files),
        "files_skipped": len(plan.bad_files),
    }
    if chunked:
        counts["passages_embedded"] = built.count - plan.passages_reused
        counts["passages_reused"] = plan.passages_reused
    if counts["rows_read"] != counts["rows_embedded"] + counts["rows_reused"] + counts["rows_quarantined"]:
        raise RuntimeError(f"row accounting does not add up: {counts}")
    return counts


def _lap(started: float, timings: dict) -> float:
    return round(time.perf_counter() - started - sum(timings.values()), 3)


def format_plan(plan: PlanSummary, version_dir: Path) -> str:
    """What --plan-only prints: what a run would do, and where the plan lies."""
    reasons = ", ".join(f"{k}={v:,}" for k, v in sorted(plan.quarantine_by_reason.items())) or "none"
    deleted = f"{plan.rows_deleted:,}" if plan.sources.previous_dir else "not counted (no published version compared)"
    return "\n".join([
        f"plan only (nothing embedded, nothing published): {version_dir / PLAN_DIR}",
        f"  rows read {plan.rows_read:,} = to embed {plan.rows_to_embed:,} + reused {plan.rows_reused:,} "
        f"({plan.rows_salvaged:,} salvaged) + quarantined {plan.rows_quarantined:,} ({reasons})",
        f"  deleted since the published version: {deleted}",
        f"  files read {len(plan.files)}, skipped {len(plan.bad_files)}; {plan.partitions} id partitions",
        f"  stored vectors: {plan.decision}",
        f"  quarantine: {version_dir / QUARANTINE_FILE}",
        f"  seconds: {plan.seconds}",
    ])


def format_summary(result: EmbedResult, root: Path) -> str:
    m = result.manifest
    c, t, i = m["counts"], m["throughput"], m["index"]
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(c["quarantine_by_reason"].items())) or "none"
    salvaged = f" ({c['rows_salvaged']:,} salvaged from an interrupted run)" if c.get("rows_salvaged") else ""
    # only an incremental run compares ids with the published version
    deleted = f"{c['rows_deleted']:,}" if m["pipeline"].get("incremental") else "not counted (full run)"
    lines = [
        f"published version {result.version} in {root}",
        f"  rows read {c['rows_read']:,} = embedded {c['rows_embedded']:,} + reused {c['rows_reused']:,}{salvaged} "
        f"+ quarantined "
        f"{c['rows_quarantined']:,} ({reasons}); deleted since the previous version: {deleted}",
        *([f"  passages: embedded {c['passages_embedded']:,} + reused {c['passages_reused']:,} "
           f"({m['chunking']['chunk_tokens']} tokens, overlap {m['chunking']['chunk_overlap']})"]
          if "chunking" in m else []),
        f"  truncated texts: {c['rows_truncated']:,}; files skipped: {c['files_skipped']}",
        f"  tokens {t['tokens']:,} in {t['embed_stage_s']} s: {t['tokens_per_s'] or 0} tokens/s "
        f"({t['actors']} {t['device']} actor(s), padding {t['padding_share']:.1%})",
        f"  index {i['factory']} ({i['count']:,} vectors, {i.get('built_by', 'rebuild')}): "
        f"{result.version_dir / i['file']}, recall@10 {i['recall_at_10']}",
        f"  quarantine: {result.version_dir / m['quarantine']['file']}",
        f"  total {m['timings_s']['total']} s",
    ]
    return "\n".join(lines)
