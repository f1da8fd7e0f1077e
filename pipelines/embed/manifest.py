"""manifest.json's contents: what a version holds and how it was made. `layout.py` owns the file
(reads it, writes it last and atomically: its presence marks a version complete); this module
says what goes in it.

The incremental re-index (issue 5) reads the published manifest to decide what it may reuse:
`vector_identity` must be equal (same encoder weights and settings, same instruction and text
composition), and the vectors parquet's (id, content_hash) say which documents are unchanged.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq

from .batch_udfs import vectors_schema
from .layout import QUARANTINE_FILE, VECTORS, vector_files_of

FORMAT = "l2v-embed/1"
TEXT_COMPOSITION = "title.strip() + '\\n\\n' + text when the row has a non-empty title, else text"


def vector_identity(encoder_identity: dict, dtype: str, instruction: str | None, title_column: str | None,
                    chunking: dict | None = None) -> dict:
    """Everything that decides a document's vector besides its text: equal identities mean a
    stored vector can be reused for an unchanged content_hash. The dtype counts: bf16 vectors
    (GPU) differ slightly from float32 ones (CPU), and one index should not mix them. Passage
    settings count when documents are split (and are absent otherwise, so unchunked versions
    made before chunking existed keep their identity)."""
    identity = {
        "encoder": encoder_identity,
        "dtype": dtype,
        "instruction": instruction,
        "title_column": title_column,
        "text_composition": TEXT_COMPOSITION,
        "normalized": True,
    }
    return identity | ({"chunking": dict(chunking)} if chunking else {})


def build_manifest(*, version: str, previous: str | None, cfg, encoder, instruction: str | None,
                   plan, counts: dict, index_info: dict, throughput: dict, timings: dict) -> dict:
    """encoder: dataflow.EncoderInfo; plan: plan.PlanSummary; index_info: index_info.json's
    contents (`index_build.BuiltIndex.info`)."""
    return {
        "format": FORMAT,
        "version": version,
        "previous_version": previous,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "vector_identity": vector_identity(encoder.identity, encoder.dtype, instruction, cfg.title_column,
                                           cfg.chunking),
        "encoder": {
            "source": encoder.source,
            "identity": encoder.identity,
            "settings": encoder.settings,
            "device": encoder.device,
            "dtype": encoder.dtype,
        },
        "pipeline": cfg.model_dump(),
        "input": {
            "files": [{"path": f.path, "rows": f.rows} for f in plan.files],
            "bad_files": [{"path": b.path, "error": b.error} for b in plan.bad_files],
        },
        "counts": counts,
        "vectors": {"dir": VECTORS, "dim": encoder.dim, "rows": index_info["count"],
                    "columns": vectors_schema(encoder.dim, cfg.store_text, cfg.chunking is not None).names},
        "quarantine": {"file": QUARANTINE_FILE, "rows": counts["rows_quarantined"]},
        "index": {"file": index_info["index_file"], "id_map": index_info["id_map"], "info": "index_info.json",
                  "factory": index_info["factory"], "count": index_info["count"],
                  "recall_at_10": index_info["recall_at_10"], "built_by": index_info["built_by"]},
        **({"chunking": cfg.chunking} if cfg.chunking else {}),  # search groups passages by document
        "throughput": throughput,
        "timings_s": timings,
    }


def missing_parts(version_dir: Path, manifest: dict) -> tuple[list[str], list[str]]:
    """(damaged vectors, other missing parts) of a complete version: what the manifest names but
    the folder lacks. The vectors count as damaged when a file cannot be read or their rows differ
    from the manifest's (parquet footers only: no vector is read)."""
    vectors_dir = version_dir / VECTORS
    files = vector_files_of(version_dir)
    expected = manifest["vectors"].get("rows")
    vectors = []
    try:
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        if rows != expected and expected is not None:
            vectors.append(f"{vectors_dir} holds {rows} vectors, the manifest {expected}")
    except Exception as err:  # noqa: BLE001 - any unreadable footer means damaged vectors
        vectors.append(f"a vectors file in {vectors_dir} cannot be read ({err})")
    index, quarantine = manifest.get("index", {}), manifest.get("quarantine", {})
    named = [index.get("file"), index.get("id_map"), index.get("info"), quarantine.get("file")]
    others = [f"{name} is missing" for name in named if name and not (version_dir / name).is_file()]
    return vectors, others
