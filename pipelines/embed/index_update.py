"""Update a copy of the previous version's IVF index instead of rebuilding it, when that is sound.

An incremental run whose previous index is IVF-Flat or IVF-PQ, over vectors of the same
`vector_identity`, and whose change is small, reads that index (a copy: the published file is
never written), removes the faiss ids of deleted and changed documents (`remove_ids`) and adds
the new vectors under fresh ids above the previous maximum. Kept vectors keep their faiss ids;
the id map is rewritten so that every id points at its row in the *new* version's vectors files
(reused rows now live in the reused file). recall@10 is measured again exactly as `build_index`
does (the same sample of the new vectors, exact search as the truth) and nprobe re-tuned.

Otherwise the index is rebuilt: Flat (a rebuild costs what an update would), HNSW (no
`remove_ids`), another index kind now wanted, or too much change since the centroids were
trained. `index_info.json` records `built_by` ("update" or "rebuild") and `built_because`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .index_build import (
    INFO_FILE,
    BuiltIndex,
    IndexSpec,
    choose_index,
    count_vectors,
    finish_index,
    sample_rows,
    sample_vectors,
    stream_vectors,
)
from .layout import vector_files_in

logger = logging.getLogger(__name__)

# IVF centroids are trained once; vectors removed and added later are not what they were trained
# on, so lists grow unbalanced and recall at a given nprobe drifts down. Updates are allowed
# while the vectors removed (or added) since the last training stay within this share of the
# count it was trained on, summed over successive nightly updates; past it the index is rebuilt
# and retrained. Recall is measured again after every update (nprobe re-tuned), so any drift
# shows in index_info.json; a rebuild stays cheap next to embedding, so the cap errs low.
UPDATE_MAX_SHARE = 0.10


def plan_index_update(previous_dir: Path | None, kept: int, new_count: int, dim: int, requested: str,
                      memory_budget: int) -> tuple[bool, str]:
    """(update?, why). `previous_dir`: the published version whose vectors this run reused (None
    when it reused none: first run, full run, another vector identity); `kept`: rows reused from it."""
    if previous_dir is None:
        return False, "no previous index over vectors of the same identity (first, full or re-embedding run)"
    try:
        info = json.loads((previous_dir / INFO_FILE).read_text())
    except (OSError, ValueError) as err:
        return False, f"the previous index info cannot be read ({err})"
    kind = info.get("kind")
    if kind == "flat":
        return False, "a Flat index is rebuilt: that costs what an update would"
    if kind == "hnsw":
        return False, "an HNSW index is rebuilt: HNSW cannot remove ids"
    wanted = choose_index(new_count, dim, requested, memory_budget)
    same_codes = all(wanted.params.get(k) == info["params"].get(k) for k in ("pq_m", "pq_bits"))
    if wanted.kind != kind or not same_codes:
        return False, f"{new_count:,} vectors now want {wanted.factory}; the previous index is {info['factory']}"
    since = _since_training(info)
    removed = since["removed"] + info["count"] - kept
    added = since["added"] + new_count - kept
    share = max(removed, added) / max(1, since["trained_count"])
    counts = (f"{removed:,} removed and {added:,} added since training on {since['trained_count']:,} vectors "
              f"({share:.1%}")
    if share > UPDATE_MAX_SHARE:
        return False, f"{counts} > {UPDATE_MAX_SHARE:.0%}): retraining"
    return True, f"{counts} <= {UPDATE_MAX_SHARE:.0%}): updated {info['factory']} of {previous_dir.name} in place"


def _since_training(info: dict) -> dict:
    return info.get("since_training") or {"trained_count": info["count"], "removed": 0, "added": 0}


def update_index(version_dir: Path, vectors_dir: Path, previous_dir: Path, kept_ids: pa.Array, dim: int, *,
                 recall_queries: int = 200, recall_target: float = 0.95, seed: int = 0,
                 built_because: str = "") -> BuiltIndex:
    """Write index.faiss, id_map.parquet and index_info.json into `version_dir` by updating the
    previous version's IVF index. `kept_ids`: ids whose vector was copied unchanged from
    `previous_dir`; every other id of the previous index is removed, every other row of
    `vectors_dir` added. Returns a `BuiltIndex` like `build_index`."""
    start = time.perf_counter()
    previous = json.loads((previous_dir / INFO_FILE).read_text())
    files = vector_files_in(vectors_dir)
    n = count_vectors(files)
    spec = IndexSpec(previous["kind"], previous["factory"], previous["chosen_because"],
                     previous["memory_bytes_estimate"], previous["params"])
    query_rows, _ = sample_rows(n, recall_queries, 0, seed)  # the same queries build_index would take
    queries, _ = sample_vectors(files, dim, query_rows, None)

    index = faiss.read_index(str(previous_dir / previous["index_file"]))
    old = pq.read_table(previous_dir / previous["id_map"], columns=["faiss_id", "id"])
    keep = pc.is_in(old.column("id"), value_set=kept_ids)
    removed = old.filter(pc.invert(keep)).column("faiss_id").to_numpy()
    if index.remove_ids(np.ascontiguousarray(removed, dtype=np.int64)) != len(removed):
        raise RuntimeError(f"the index of {previous_dir.name} does not hold the ids its id map lists; "
                           f"rebuild it (run without --incremental)")
    largest = pc.max(old.column("faiss_id")).as_py()
    place = _keep_or_add(index, old.filter(keep), next_id=0 if largest is None else largest + 1)
    exact, totals = stream_vectors(files, dim, version_dir, queries, place)
    if index.ntotal != n:
        raise RuntimeError(f"the updated index holds {index.ntotal} vectors, the version {n}: refusing to publish it")
    since = _since_training(previous)
    added = n - (len(old) - len(removed))
    logger.info("index: updated %s of %s: removed %d, added %d", spec.factory, previous_dir.name, len(removed), added)
    return finish_index(index, spec, version_dir, queries, exact, totals, recall_target, start, {
        "train_size": previous["train_size"],
        "built_by": "update",
        "built_because": built_because,
        "updated_from": previous_dir.name,
        "removed": int(len(removed)),
        "added": int(added),
        "since_training": {"trained_count": since["trained_count"], "removed": since["removed"] + int(len(removed)),
                           "added": since["added"] + int(added)},
    })


def _keep_or_add(index, kept: pa.Table, next_id: int):
    """A `place` for stream_vectors: a kept id keeps its old faiss id (its vector is already in
    the index); any other row is added under a fresh id."""
    kept_ids = kept.column("id").combine_chunks()
    kept_faiss = kept.column("faiss_id").to_numpy()

    def place(ids: pa.Array, vectors: np.ndarray) -> np.ndarray:
        nonlocal next_id
        where = pc.index_in(ids, value_set=kept_ids)
        is_new = where.is_null().to_numpy(zero_copy_only=False)
        faiss_ids = np.empty(len(ids), dtype=np.int64)
        faiss_ids[~is_new] = kept_faiss[where.filter(pc.invert(where.is_null())).to_numpy()]
        faiss_ids[is_new] = np.arange(next_id, next_id + int(is_new.sum()), dtype=np.int64)
        next_id += int(is_new.sum())
        if is_new.any():
            index.add_with_ids(np.ascontiguousarray(vectors[is_new]), faiss_ids[is_new])
        return faiss_ids

    return place
