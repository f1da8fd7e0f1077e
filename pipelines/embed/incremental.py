"""Incremental runs (`--incremental`): reuse the published version's vectors for unchanged documents.

Against the published version: a document whose (id, content_hash) is already there keeps its
stored vector (the model is not run for it); a new id or a changed text is embedded; an id that
is gone from the input is left out of the new version (and so of its index). Reuse needs the same
`vector_identity` (encoder weights and settings, instruction, text composition) and the same
`store_text`: otherwise the run re-embeds everything and says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .layout import OutputLayout
from .scan import Plan

logger = logging.getLogger(__name__)

REUSED_FILE = "reused-00000.parquet"


@dataclass
class Reuse:
    previous_dir: Path | None
    ids: pa.Array  # ids whose stored vector is reused
    rows_deleted: int
    reason: str

    @property
    def rows(self) -> int:
        return len(self.ids)


def nothing_reused(reason: str) -> Reuse:
    return Reuse(None, pa.array([], pa.string()), 0, reason)


def plan_reuse(plan: Plan, layout: OutputLayout, previous: str | None, identity: dict, store_text: bool) -> Reuse:
    """Take the reusable rows out of `plan.keep` (they will not be read or embedded)."""
    if previous is None:
        return nothing_reused("no published version yet: embedding everything")
    manifest = layout.read_manifest(previous)
    if manifest.get("vector_identity") != identity:
        changed = sorted(k for k in identity if manifest.get("vector_identity", {}).get(k) != identity[k])
        return nothing_reused(f"the published version {previous} was made with a different {', '.join(changed)}: "
                              f"re-embedding everything")
    if ("text" in manifest["vectors"]["columns"]) != store_text:
        return nothing_reused(f"store_text changed since {previous}: re-embedding everything")
    previous_dir = layout.version_dir(previous)
    stored = pq.read_table(previous_dir / "vectors", columns=["id", "content_hash"])
    reusable = plan.kept.join(stored, keys=["id", "content_hash"], join_type="inner")
    for file_index, row in zip(reusable.column("file_index").to_numpy(), reusable.column("row").to_numpy()):
        plan.keep[file_index][row] = False
    deleted = int(pc.sum(pc.invert(pc.is_in(stored.column("id"), value_set=plan.kept.column("id")))).as_py() or 0)
    return Reuse(previous_dir, reusable.column("id").combine_chunks(), deleted,
                 f"reusing {reusable.num_rows:,} unchanged vectors from {previous}; {deleted:,} ids deleted")


def copy_reused(reuse: Reuse, vectors_dir: Path) -> int:
    """Stream the reused rows from the previous version's vectors into this version's; returns
    their tokens."""
    if not reuse.rows:
        return 0
    vectors_dir.mkdir(parents=True, exist_ok=True)
    wanted = reuse.ids
    written = tokens = 0
    writer = None
    try:
        for path in sorted((reuse.previous_dir / "vectors").glob("*.parquet")):
            parquet = pq.ParquetFile(path)
            for batch in parquet.iter_batches(batch_size=16384):
                keep = pc.is_in(batch.column("id"), value_set=wanted)
                if not pc.any(keep).as_py():
                    continue
                rows = pa.Table.from_batches([batch.filter(keep)])
                if writer is None:
                    writer = pq.ParquetWriter(vectors_dir / REUSED_FILE, rows.schema)
                writer.write_table(rows)
                written += rows.num_rows
                tokens += int(pc.sum(rows.column("n_tokens")).as_py() or 0)
    finally:
        if writer is not None:
            writer.close()
    if written != reuse.rows:
        raise RuntimeError(f"expected to reuse {reuse.rows} vectors but found {written} in {reuse.previous_dir}")
    return tokens


def has_changes(plan: Plan, reuse: Reuse, previous_manifest: dict | None) -> bool:
    """False when the input adds, changes and deletes nothing and quarantines the same rows."""
    if previous_manifest is None or reuse.previous_dir is None:
        return True
    nothing_to_embed = not any(k.any() for k in plan.keep)
    same_quarantine = previous_manifest["counts"]["rows_quarantined"] == plan.quarantine.num_rows
    return not (nothing_to_embed and reuse.rows_deleted == 0 and same_quarantine)

