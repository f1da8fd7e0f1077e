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
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from ..sources import list_parquet_files
from . import faults
from .config import EmbedConfig
from .incremental import Reuse, copy_reused, has_changes, plan_reuse, write_run_record
from .index_shards import build_index_on_workers, update_index_on_worker
from .index_update import plan_index_update
from .layout import QUARANTINE_FILE, DamagedOutputError, OutputLayout, sync_tree
from .manifest import build_manifest, vector_identity, write_manifest
from .preflight import check_room_for_text
from .ray_steps import describe_encoder, effective_instruction, embed_planned_rows, ensure_ray, placement, scan_files
from .scan import Columns, Plan, check_columns, open_parquet, plan_rows
from .stages import read_actor_stats, vectors_schema

logger = logging.getLogger(__name__)


class WouldDeleteEverythingError(ValueError):
    """An incremental run found no document to embed while the published version holds some."""


@dataclass
class EmbedResult:
    version: str
    version_dir: Path
    manifest: dict
    published: bool = True  # False: an incremental run found no changes and published nothing
    run_counts: dict | None = None  # this run's counts when it published nothing (else the manifest's)

    @property
    def counts(self) -> dict:
        return self.run_counts if self.run_counts is not None else self.manifest["counts"]


def run_embed(cfg: EmbedConfig) -> EmbedResult:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    layout = OutputLayout(cfg.output)
    columns = Columns(cfg.id_column, cfg.text_column, cfg.title_column)
    files = list_parquet_files(cfg.input)
    _check_first_file(files[0], columns)
    check_room_for_text(cfg)
    with layout.lock():
        ensure_ray()
        previous = _published(layout, cfg.incremental)
        where = placement(cfg)
        encoder_ref = describe_encoder(cfg, where)
        logger.info("scanning %d file(s)", len(files))
        scans, bad_files = scan_files(files, columns, cfg.skip_bad_files)
        plan = plan_rows(scans)
        plan.bad_files = bad_files
        encoder = ray.get(encoder_ref)
        instruction = effective_instruction(cfg, encoder)
        identity = vector_identity(encoder["identity"], encoder["dtype"], instruction, cfg.title_column)
        reuse = plan_reuse(plan, layout, previous, identity, cfg.store_text,
                           vectors_schema(encoder["dim"], cfg.store_text), incremental=cfg.incremental)
        _log_reuse(cfg, reuse)
        timings["scan"] = _lap(started, timings)
        logger.info("%d rows read: %d to embed, %d reused, %d quarantined", plan.rows_read,
                    plan.rows_to_embed - reuse.rows, reuse.rows, plan.quarantine.num_rows)
        faults.point("after_scan")
        if cfg.incremental and previous and plan.rows_to_embed == 0:
            _refuse_to_delete_everything(layout, previous, plan)
        if cfg.incremental and previous and not has_changes(plan, reuse):
            print(f"no changes since the published version {previous}: nothing embedded, nothing published")
            layout.prune(cfg.keep_versions)  # leftovers of interrupted runs: nothing in them is needed
            manifest = layout.read_manifest(previous)
            return EmbedResult(previous, layout.version_dir(previous), manifest, published=False,
                               run_counts=_unchanged_counts(plan, reuse, manifest["counts"]))
        if plan.rows_to_embed == 0:
            logger.warning("no document to embed (%d rows read, %d quarantined): publishing a version with no "
                           "vectors, and the quarantine", plan.rows_read, plan.quarantine.num_rows)

        version, version_dir = layout.new_version()
        write_run_record(version_dir, identity, cfg.store_text)  # before any vector: makes them salvageable
        pq.write_table(plan.quarantine, version_dir / QUARANTINE_FILE)
        embed_seconds = embed_planned_rows(plan, cfg, encoder, where, version_dir / "vectors", version_dir / "_stats")
        reused_tokens = copy_reused(reuse, version_dir / "vectors")
        _check_vectors_match_plan(plan, version_dir / "vectors")
        timings["embed"] = _lap(started, timings)
        faults.point("after_vectors")

        index_info = _index(cfg, version_dir, encoder["dim"], plan, reuse)
        timings["index"] = _lap(started, timings)
        faults.point("after_index")

        counts = _counts(plan, index_info, reuse)
        stats = read_actor_stats(version_dir / "_stats")
        shutil.rmtree(version_dir / "_stats", ignore_errors=True)
        tokens = index_info["tokens"] - reused_tokens  # embedded by this run
        throughput = {
            "tokens": tokens,
            "embed_stage_s": round(embed_seconds, 3),
            "tokens_per_s": round(tokens / embed_seconds, 1) if embed_seconds else None,
            "actor_busy_tokens_per_s": round(stats["tokens"] / stats["busy_s"], 1) if stats["busy_s"] else None,
            "padding_share": round(stats["padding_share"], 4),
            "actors": where["actors"], "device": where["device"], "rows_per_actor": sorted(stats["rows_per_actor"]),
            "actor_starts": stats["actors"],  # above `actors`: Ray restarted embed actors and retried their batches
        }
        if stats["actors"] > where["actors"]:
            logger.warning("embed actors started %d times for a pool of %d: Ray restarted lost actors and "
                           "retried their batches", stats["actors"], where["actors"])
        timings["total"] = round(time.perf_counter() - started, 3)
        manifest = build_manifest(
            version=version, previous=previous, cfg=cfg, encoder=encoder,
            instruction=instruction, plan=plan, counts=counts,
            index_info=index_info, throughput=throughput, timings=timings,
        )
        manifest["incremental"] = {"enabled": cfg.incremental, "decision": reuse.reason}
        manifest["salvage"] = {"rows": reuse.rows_salvaged, "from_versions": reuse.salvaged_from,
                               "skipped_files": reuse.skipped_files}
        sync_tree(version_dir)
        write_manifest(version_dir, manifest)  # last: marks the version complete
        faults.point("before_publish")
        layout.publish(version)
        layout.prune(cfg.keep_versions, writing=version)
    result = EmbedResult(version, version_dir, manifest)
    print(format_summary(result, layout.root))
    return result


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


def _refuse_to_delete_everything(layout: OutputLayout, previous: str, plan: Plan) -> None:
    """An empty export (or one whose every row is rejected) is far more often a broken upstream
    step than a corpus that really became empty: an incremental run refuses to delete every
    document. The quarantine is written to an unpublished folder (pruned by the next run) so the
    user can see why each row was rejected."""
    published = layout.read_manifest(previous)["index"]["count"]
    if not published:
        return  # nothing to lose: an empty corpus stays empty
    _, report_dir = layout.new_version()
    pq.write_table(plan.quarantine, report_dir / QUARANTINE_FILE)
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(plan.quarantine_by_reason().items())) or "none"
    raise WouldDeleteEverythingError(
        f"the input has no document to embed ({plan.rows_read:,} rows read, {plan.quarantine.num_rows:,} "
        f"quarantined: {reasons}) but the published version {previous} holds {published:,}: this --incremental "
        f"run would delete all {published:,} documents, so nothing was published. The rejected rows, each with "
        f"its reason: {report_dir / QUARANTINE_FILE} (kept until the next run). If the corpus really is empty "
        f"now, run without --incremental to publish an empty version"
    )


def _log_reuse(cfg: EmbedConfig, reuse: Reuse) -> None:
    if cfg.incremental:
        logger.warning("incremental: %s", reuse.reason)
    if reuse.rows_salvaged:
        logger.warning("salvaged %d vectors written by interrupted run(s) %s (same vector identity): not embedding "
                       "them again", reuse.rows_salvaged, ", ".join(reuse.salvaged_from))
    if reuse.skipped_files:
        logger.warning("skipped %d unreadable vectors file(s) of interrupted runs (cut off mid-write)",
                       len(reuse.skipped_files))


def _index(cfg: EmbedConfig, version_dir: Path, dim: int, plan: Plan, reuse: Reuse) -> dict:
    """Update the previous IVF index in place when the change is small, else build afresh."""
    previous_index = None if reuse.repair else reuse.previous_dir  # an incomplete version's index is not used
    update, why = plan_index_update(previous_index, len(reuse.published_ids), plan.rows_to_embed, dim,
                                    cfg.index, cfg.index_memory_bytes)
    if reuse.repair:
        why = reuse.repair
    settings = {"recall_queries": cfg.recall_queries, "recall_target": cfg.recall_target, "seed": cfg.seed}
    if update:
        return update_index_on_worker(version_dir, version_dir / "vectors", reuse.previous_dir, reuse.published_ids,
                                      dim, built_because=why, **settings)
    if reuse.previous_dir is not None:
        logger.info("index: rebuilding (%s)", why)
    requested = cfg.index if plan.rows_to_embed else "flat"  # nothing to train an IVF index on
    return build_index_on_workers(version_dir, version_dir / "vectors", dim, requested=requested,  # Ray tasks
                                  memory_budget=cfg.index_memory_bytes, built_because=why, **settings)


def _check_first_file(uri: str, columns: Columns) -> None:
    """Fail on missing columns before starting anything (every file is checked again by the scan)."""
    try:
        schema = open_parquet(uri).schema_arrow
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the scan, with --skip-bad-files honoured
        return
    check_columns(uri, schema, columns)


def _check_vectors_match_plan(plan, vectors_dir: Path) -> None:
    """Every planned (id, content_hash) once, nothing else. The read stage reads the files again
    after the scan: a file rewritten in between (same row count, other ids or texts) would
    otherwise publish duplicates and lose documents."""
    written = pq.read_table(vectors_dir, columns=["id", "content_hash"])
    keys = pc.binary_join_element_wise(written.column("id"), written.column("content_hash"), "\x1f")
    expected = pc.binary_join_element_wise(plan.kept.column("id"), plan.kept.column("content_hash"), "\x1f")
    # min_count=0: `all` of no rows is true (the default gives null, which would refuse an empty corpus)
    if (len(keys) != len(expected) or pc.count_distinct(keys).as_py() != len(keys)
            or not pc.all(pc.is_in(keys, value_set=expected), min_count=0).as_py()):
        raise RuntimeError(
            "the vectors written do not match the scanned input (an input file changed during the run?); "
            "nothing was published: run again once the input is stable"
        )


def _unchanged_counts(plan, reuse, published: dict) -> dict:
    """What a run that found nothing to do reports: everything reused, nothing embedded."""
    return {
        "rows_read": plan.rows_read, "rows_embedded": 0, "rows_reused": reuse.rows, "rows_salvaged": 0,
        "rows_deleted": 0, "rows_quarantined": plan.quarantine.num_rows,
        "quarantine_by_reason": plan.quarantine_by_reason(), "rows_truncated": published["rows_truncated"],
        "files_read": len(plan.files), "files_skipped": len(plan.bad_files),
    }


def _counts(plan, index_info: dict, reuse) -> dict:
    if index_info["count"] != plan.rows_to_embed:
        raise RuntimeError(
            f"{plan.rows_to_embed} rows were planned (embedded or reused) but the vectors hold {index_info['count']}: "
            f"refusing to publish an incomplete version"
        )
    counts = {
        "rows_read": plan.rows_read,
        "rows_embedded": index_info["count"] - reuse.rows,
        "rows_reused": reuse.rows,
        "rows_salvaged": reuse.rows_salvaged,  # part of rows_reused: written by an interrupted run
        "rows_deleted": reuse.rows_deleted,
        "rows_quarantined": plan.quarantine.num_rows,
        "quarantine_by_reason": plan.quarantine_by_reason(),
        "rows_truncated": index_info["truncated"],
        "files_read": len(plan.files),
        "files_skipped": len(plan.bad_files),
    }
    if counts["rows_read"] != counts["rows_embedded"] + counts["rows_reused"] + counts["rows_quarantined"]:
        raise RuntimeError(f"row accounting does not add up: {counts}")
    return counts


def _lap(started: float, timings: dict) -> float:
    return round(time.perf_counter() - started - sum(timings.values()), 3)


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
        f"  truncated texts: {c['rows_truncated']:,}; files skipped: {c['files_skipped']}",
        f"  tokens {t['tokens']:,} in {t['embed_stage_s']} s: {t['tokens_per_s'] or 0} tokens/s "
        f"({t['actors']} {t['device']} actor(s), padding {t['padding_share']:.1%})",
        f"  index {i['factory']} ({i['count']:,} vectors, {i.get('built_by', 'rebuild')}): "
        f"{result.version_dir / i['file']}, recall@10 {i['recall_at_10']}",
        f"  quarantine: {result.version_dir / m['quarantine']['file']}",
        f"  total {m['timings_s']['total']} s",
    ]
    return "\n".join(lines)
