"""The FAISS index built on Ray workers: trained once on a sample, added in shards, merged.

    built = build_index_on_workers(version_dir, version_dir / "vectors", dim, requested="auto")

Where each step runs (the driver plans and waits; it never holds the vectors, nor the index):

1. plan (driver): row counts per vectors file and row group, from the parquet footers; the
   shards are contiguous ranges of stream positions (files in sorted order, rows in file order),
   so a vector's faiss id is its position in that stream, exactly as in a serial build.
2. sample (a task per shard): the rows of its range that belong to the training sample and to
   the recall queries (`sample_rows`: the same positions a serial build takes).
3. train (one task): IVF centroids and PQ codebooks on the sample; returns the trained, empty
   index, serialized (centroids and codebooks only: small).
4. add (a task per shard): a copy of the trained index gets its range's vectors with
   `add_with_ids`; it writes the shard index, its part of the id map and the exact top-10 of
   each recall query within its range to `<version>/_index_shards/`. A task whose worker dies
   is retried by Ray (`SHARD_RETRIES`; it rewrites its files whole); one that raises fails the
   build with an error naming the shard, and nothing is published.
5. merge (one task): the first shard absorbs the others with `merge_from` (the IVF inverted
   lists are appended in shard order, so the merged index equals a serial build over the same
   trained index, order within each list included); the queries' exact top-10 are combined,
   nprobe tuned for `recall_target` on the merged index, one `index.faiss` and one
   `id_map.parquet` written; the shard folder is removed.

Why one merged file (`merge_from` in memory) rather than `faiss.contrib.ondisk.merge_ondisk`
or shards that search loads together: search, the query service and the nightly in-place update
(`index_update.py`: `remove_ids`, `add_with_ids`) all read one `index.faiss` into memory, and
keep doing so unchanged. `merge_ondisk` writes an index whose lists live in a second file named
by absolute path (a version folder could no longer be moved or published as one unit), and its
lists are made for read-mostly serving, not for the nightly removals; it is the tool for an
index larger than one machine's memory, which search would then have to map from disk. Shards
loaded together would make every reader merge results and tune nprobe per shard. `merge_from`
costs one copy of the codes, small next to the adds.

Flat and HNSW indexes, and IVF ones too small to be worth shards (`MIN_SHARD_ROWS`), are built
by `index_build.build_index` in a single task: an HNSW graph cannot be merged from parts, and
`auto` picks Flat only up to 50,000 vectors, where adding is a copy and task start-up would cost
more than shards save.

Threads: every task sets faiss' OpenMP threads (which also drive its BLAS) to the CPUs it
reserves: each shard task its share of the cluster, train and merge (which run alone) the CPUs
of one node, so shards never oversubscribe the cores.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from .. import faults
from .index_build import (
    CHUNK_ROWS,
    DOC_ID,
    ID_MAP_FILE,
    RECALL_K,
    VECTOR_COLUMNS,
    BuiltIndex,
    IndexSpec,
    append_in_order,
    as_matrix,
    build_index,
    choose_index,
    concat_id_maps,
    finish_index,
    merge_top_k,
    new_index,
    sample_rows,
    stream_chunks,
    train_index,
    vector_columns,
)
from .index_update import update_index
from .layout import vector_files_in

logger = logging.getLogger(__name__)

SHARDS_DIR = "_index_shards"
MIN_SHARD_ROWS = 100_000  # below this per shard, task start-up and the merge outweigh the parallel adds
SHARD_RETRIES = 2  # a shard task whose worker dies (OOM kill, lost node) is run again this often


class IndexBuildError(RuntimeError):
    """A shard of the index could not be built; nothing was published."""


@dataclass(frozen=True)
class VectorsLayout:
    """The vectors files, the row count of each of their row groups and the columns the adds read
    (from the footers)."""

    vectors_dir: Path
    names: tuple[str, ...]
    row_groups: tuple[tuple[int, ...], ...]
    columns: tuple[str, ...] = tuple(VECTOR_COLUMNS)

    @property
    def total(self) -> int:
        return sum(sum(groups) for groups in self.row_groups)


@dataclass(frozen=True)
class ShardRange:
    """Stream positions [start, stop) of one shard: its vectors' faiss ids."""

    index: int
    start: int
    stop: int


@dataclass(frozen=True)
class ShardResult:
    index: int
    index_file: Path
    id_map_file: Path
    count: int
    exact_ids: np.ndarray  # (queries, k): exact top-k of the recall queries within the shard
    exact_scores: np.ndarray
    tokens: int
    truncated: int
    add_seconds: float
    attempts: int  # above 1: Ray ran the task again after its worker was lost


@dataclass(frozen=True)
class WorkerPlan:
    shards: int
    shard_cpus: int  # CPUs each shard task reserves, and faiss threads it uses
    single_cpus: int  # the same for train, merge and single-task builds (they run alone)


# ------------------------------------------------------------------ the driver's side
def build_index_on_workers(version_dir: Path, vectors_dir: Path, dim: int, *, requested: str = "auto",
                           memory_budget: int = 4 << 30, recall_queries: int = 200, recall_target: float = 0.95,
                           seed: int = 0, built_because: str = "a fresh build",
                           shards: int | None = None) -> BuiltIndex:
    """Write index.faiss, id_map.parquet and index_info.json into `version_dir` using Ray tasks
    (steps in the module docstring); returns a `BuiltIndex` like `build_index`. `shards`: how many
    add tasks (default: one per CPU of the cluster, at most one per MIN_SHARD_ROWS vectors)."""
    start = time.perf_counter()
    layout = read_layout(vectors_dir)
    n = layout.total
    spec = choose_index(n, dim, requested, memory_budget)
    plan = plan_workers(n, spec.kind, shards)
    settings = {"requested": requested, "memory_budget": memory_budget, "recall_queries": recall_queries,
                "recall_target": recall_target, "seed": seed, "built_because": built_because}
    if plan.shards == 1:
        logger.info("index: %s for %d vectors in one task (%d threads)", spec.factory, n, plan.single_cpus)
        built = _get(_task(plan.single_cpus).remote(plan.single_cpus, build_index, version_dir, vectors_dir, dim,
                                                    **settings), "building the index")
        return replace(built, info={**built.info, "threads_per_worker": plan.single_cpus})
    logger.info("index: %s for %d vectors of dim %d (%s); %d shards of ~%d vectors, %d thread(s) each",
                spec.factory, n, dim, spec.reason, plan.shards, math.ceil(n / plan.shards), plan.shard_cpus)
    shard_dir = Path(version_dir) / SHARDS_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _build_sharded(version_dir, layout, dim, spec, plan, shard_dir, start, recall_queries,
                              recall_target, seed, built_because)
    finally:
        shutil.rmtree(shard_dir, ignore_errors=True)


def update_index_on_worker(version_dir: Path, vectors_dir: Path, previous_dir: Path,
                           kept_ids: Callable[[], pa.Array], dim: int, **settings) -> BuiltIndex:
    """`index_update.update_index` in one Ray task (it streams every vector of the version).

    `kept_ids` is called inside the task: the kept ids number as many as the corpus, so they are
    read on the worker, never on the driver."""
    cpus = plan_workers(0, "flat").single_cpus
    return _get(_task(cpus).remote(cpus, _update_with, version_dir, vectors_dir, previous_dir, kept_ids, dim,
                                   **settings), "updating the index")


def _update_with(version_dir, vectors_dir, previous_dir, kept_ids: Callable[[], pa.Array], dim,
                 **settings) -> BuiltIndex:
    return update_index(version_dir, vectors_dir, previous_dir, kept_ids(), dim, **settings)


def _build_sharded(version_dir, layout, dim, spec: IndexSpec, plan: WorkerPlan, shard_dir: Path, start: float,
                   recall_queries: int, recall_target: float, seed: int, built_because: str) -> BuiltIndex:
    ranges = split_ranges(layout.total, plan.shards)
    query_rows, train_rows = sample_rows(layout.total, recall_queries, spec.train_size, seed)
    steps: dict[str, float] = {}

    sampled = [_task(plan.shard_cpus, num_returns=2).remote(
        plan.shard_cpus, sample_range, layout, r, dim, _within(query_rows, r), _within(train_rows, r))
        for r in ranges]
    queries = np.concatenate(ray.get([q for q, _ in sampled]))  # small: --recall-queries vectors
    train_parts = [t for _, t in sampled]
    ray.wait(train_parts, num_returns=len(train_parts), fetch_local=False)
    steps["sample"] = round(time.perf_counter() - start, 3)
    # the trained index stays in the object store (with many lists of wide vectors it is not
    # small); the driver only fetches its size, which raises if training failed
    trained, trained_bytes = _task(plan.single_cpus, num_returns=2).remote(
        plan.single_cpus, train_serialized, spec, dim, *train_parts)
    logger.info("index: sampled %d training vectors and %d queries in %d tasks",
                0 if train_rows is None else len(train_rows), len(queries), len(ranges))
    logger.info("index: trained (%d bytes of centroids and codebooks)", _get(trained_bytes, "training the index"))
    steps["train"] = _lap(start, steps)

    fault = faults.for_worker(faults.INDEX_SHARD)
    adding = {_task(plan.shard_cpus, max_retries=SHARD_RETRIES).remote(
        plan.shard_cpus, add_shard, trained, spec, layout, r, dim, queries, shard_dir, fault): r for r in ranges}
    results = _gather_shards(adding)
    steps["add"] = _lap(start, steps)

    extra = {
        "train_size": 0 if train_rows is None else len(train_rows),
        "built_by": "rebuild",
        "built_because": built_because,
        "since_training": {"trained_count": layout.total, "removed": 0, "added": 0},
        "workers": plan.shards,
        "threads_per_worker": plan.shard_cpus,
        "shards": [{"rows": r.count, "add_s": r.add_seconds, "attempts": r.attempts} for r in results],
        "steps_s": steps,
    }
    merge = _task(plan.single_cpus).remote(plan.single_cpus, merge_shards, Path(version_dir), spec, results, queries,
                                           recall_target, time.perf_counter() - start, extra)
    built = _get(merge, "merging the index shards")
    logger.info("index: merged %d shards into %d vectors, recall@10 %.3f (%s)", len(results), built.count,
                built.info["recall_at_10"], built.info["search_params"])
    return built


def _gather_shards(adding: dict) -> list[ShardResult]:
    """Wait for every add task, logging progress; the first failure cancels the rest and raises."""
    results, pending = [], list(adding)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        shard = adding[done[0]]
        try:
            result = ray.get(done[0])
        except ray.exceptions.RayError as err:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise IndexBuildError(
                f"adding index shard {shard.index} (vectors {shard.start:,}-{shard.stop - 1:,}) failed after "
                f"{SHARD_RETRIES} retries of a lost worker, or raised: {_cause(err)}; nothing was published"
            ) from err
        results.append(result)
        logger.info("index: shard %d/%d added (%d vectors, %.1f s)", len(results), len(adding), result.count,
                    result.add_seconds)
        if result.attempts > 1:
            logger.warning("index shard %d took %d attempts: Ray ran it again after its worker was lost",
                           shard.index, result.attempts)
    return sorted(results, key=lambda r: r.index)


def _get(ref, what: str):
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as err:
        if isinstance(err, ValueError):
            raise  # bad settings (Ray's error is also the task's ValueError): the run exits 2 as before
        raise IndexBuildError(f"{what} failed: {_cause(err)}; nothing was published") from err


def _cause(err: Exception) -> str:
    cause = getattr(err, "cause", None)
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(err).splitlines()[0]


def read_layout(vectors_dir: Path) -> VectorsLayout:
    files = vector_files_in(vectors_dir)
    groups = []
    for path in files:
        meta = pq.ParquetFile(path).metadata
        groups.append(tuple(meta.row_group(g).num_rows for g in range(meta.num_row_groups)))
    return VectorsLayout(Path(vectors_dir), tuple(p.name for p in files), tuple(groups), tuple(vector_columns(files)))


def plan_workers(n: int, kind: str, shards: int | None = None) -> WorkerPlan:
    """Shard count and CPUs per task from the cluster's CPUs (see the module docstring)."""
    nodes = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]]
    total, node_cpus = int(sum(nodes)) or 1, int(max(nodes, default=1)) or 1
    single = max(1, min(node_cpus, _free_cpus(node_cpus)))  # train and merge run alone at this point of a run
    if kind not in ("ivf", "ivfpq"):
        shards = 1
    elif shards is None:
        shards = min(total, max(1, n // MIN_SHARD_ROWS))
    shards = max(1, min(shards, max(1, n)))
    return WorkerPlan(shards, max(1, min(node_cpus, total // shards)), single)


def _free_cpus(wanted: int, wait_s: float = 10.0) -> int:
    """CPUs free in the cluster, waiting a little for `wanted`: the tasks and actors of the step
    before release theirs asynchronously, and one that lingers must not leave a task waiting forever."""
    deadline = time.monotonic() + wait_s
    while True:
        free = int(ray.available_resources().get("CPU", 0))
        if free >= wanted or time.monotonic() > deadline:
            return free
        time.sleep(0.2)


def split_ranges(n: int, shards: int) -> list[ShardRange]:
    return [ShardRange(i, i * n // shards, (i + 1) * n // shards) for i in range(shards)]


def _within(rows: np.ndarray | None, shard: ShardRange) -> np.ndarray:
    if rows is None:
        return np.zeros(0, np.int64)
    lo, hi = np.searchsorted(rows, [shard.start, shard.stop])
    return rows[lo:hi]


def _task(cpus: int, **options):
    # OMP_WAIT_POLICY is read when faiss' OpenMP library loads, so it goes into the workers'
    # environment. By default OpenMP threads spin between parallel regions; where the node's cores
    # are shared (other tasks, other jobs), a spinning thread waits on a descheduled one and
    # k-means slowed several-fold here (IVF-PQ training on 2 threads: 21.5 s spinning, 5.4 s passive).
    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    return _with_threads.options(num_cpus=cpus, runtime_env={"env_vars": env}, **options)


@ray.remote(max_retries=SHARD_RETRIES)  # every step rewrites its output whole: safe to run again
def _with_threads(threads: int, fn, *args, **kwargs):
    """Run `fn` in a Ray task with faiss (OpenMP, and the BLAS it links) on `threads` threads."""
    faiss.omp_set_num_threads(threads)
    return fn(*args, **kwargs)


# ------------------------------------------------------------------ the workers' side (no Ray)
def iter_range(layout: VectorsLayout, start: int, stop: int, columns: list[str],
               chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[int, int, pa.RecordBatch]]:
    """(file index, first row in that file, batch) over stream positions [start, stop): only the
    row groups that overlap the range are read."""
    file_start = 0
    for file_index, groups in enumerate(layout.row_groups):
        file_stop = file_start + sum(groups)
        if file_start < stop and file_stop > start:
            picked, position, first = [], file_start, None
            for g, rows in enumerate(groups):
                if position < stop and position + rows > start:
                    picked.append(g)
                    first = position if first is None else first
                position += rows
            position = first  # the stream position of the first row read
            parquet = pq.ParquetFile(layout.vectors_dir / layout.names[file_index])
            for batch in parquet.iter_batches(batch_size=chunk_rows, row_groups=picked, columns=columns):
                lo, hi = max(start - position, 0), min(stop - position, batch.num_rows)
                if hi > lo:
                    yield file_index, position - file_start + lo, batch.slice(lo, hi - lo)
                position += batch.num_rows
        file_start = file_stop


def sample_range(layout: VectorsLayout, shard: ShardRange, dim: int, query_rows: np.ndarray,
                 train_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The shard's recall queries and training rows (sorted stream positions inside it)."""
    wanted = np.union1d(query_rows, train_rows)
    gathered = np.zeros((len(wanted), dim), dtype=np.float32)
    position = shard.start
    if len(wanted):
        for _, _, batch in iter_range(layout, shard.start, shard.stop, ["embedding"]):
            lo, hi = np.searchsorted(wanted, [position, position + batch.num_rows])
            if hi > lo:
                gathered[lo:hi] = as_matrix(batch.column(0), dim)[wanted[lo:hi] - position]
            position += batch.num_rows
    return gathered[np.searchsorted(wanted, query_rows)], gathered[np.searchsorted(wanted, train_rows)]


def train_serialized(spec: IndexSpec, dim: int, *train_parts: np.ndarray) -> tuple[np.ndarray, int]:
    """(the trained, empty index as faiss' bytes (uint8 array), their count), from the shards'
    training rows."""
    train = np.concatenate(train_parts) if train_parts else np.zeros((0, dim), np.float32)
    trained = faiss.serialize_index(train_index(new_index(spec, dim), spec, train))
    return trained, len(trained)


def add_shard(trained: np.ndarray, spec: IndexSpec, layout: VectorsLayout, shard: ShardRange, dim: int,
              queries: np.ndarray, shard_dir: Path, fault: str | None = None) -> ShardResult:
    """Add the shard's vectors to a copy of the trained index (faiss id = stream position); write
    the shard index and its id map part (each to a temporary name first, so a retried task
    replaces a lost attempt's files whole)."""
    started = time.perf_counter()
    name = f"shard-{shard.index:05d}"
    with open(shard_dir / f"{name}.attempts", "a") as log:  # one line per attempt: retries show in the info
        log.write(f"{os.getpid()}\n")
    attempts = len((shard_dir / f"{name}.attempts").read_text().splitlines())
    index = faiss.deserialize_index(trained)
    append = append_in_order(index, spec, position=shard.start)

    def place(ids: pa.Array, vectors: np.ndarray) -> np.ndarray:
        faiss_ids = append(ids, vectors)
        faults.once(fault, faults.INDEX_SHARD, shard_dir)  # tests: a worker lost mid-shard
        return faiss_ids

    id_map_file, index_file = shard_dir / f"{name}.id_map.parquet", shard_dir / f"{name}.faiss"
    chunks = iter_range(layout, shard.start, shard.stop, list(layout.columns))
    exact, totals = stream_chunks(chunks, layout.names, dim, shard_dir / f"{name}.id_map.tmp", queries, place,
                                  chunked=DOC_ID in layout.columns)
    if index.ntotal != shard.stop - shard.start:
        raise RuntimeError(f"shard {shard.index} read {index.ntotal} vectors, its range holds "
                           f"{shard.stop - shard.start}: a vectors file changed during the build?")
    faiss.write_index(index, str(shard_dir / f"{name}.tmp"))
    os.replace(shard_dir / f"{name}.tmp", index_file)
    os.replace(shard_dir / f"{name}.id_map.tmp", id_map_file)
    return ShardResult(shard.index, index_file, id_map_file, int(index.ntotal), exact[0], exact[1],
                       totals["tokens"], totals["truncated"], round(time.perf_counter() - started, 3), attempts)


def merge_shards(version_dir: Path, spec: IndexSpec, results: list[ShardResult], queries: np.ndarray,
                 recall_target: float, elapsed: float, extra: dict) -> BuiltIndex:
    """Merge the shard indexes (in shard order) into one, then tune and write it like a serial
    build (`finish_index`)."""
    start = time.perf_counter() - elapsed  # build_seconds counts the whole build, not this task
    merging = time.perf_counter()
    index = faiss.read_index(str(results[0].index_file))
    for result in results[1:]:
        # add_id=0: the shards' ids are already global stream positions
        index.merge_from(faiss.read_index(str(result.index_file)), 0)
    expected = sum(r.count for r in results)
    if index.ntotal != expected:
        raise RuntimeError(f"the merged index holds {index.ntotal} vectors, its shards {expected}")
    k = RECALL_K
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.full((len(queries), k), -1, dtype=np.int64)
    for result in results:
        best_scores, best_ids = merge_top_k(best_scores, best_ids, result.exact_scores, result.exact_ids, k)
    concat_id_maps([r.id_map_file for r in results], version_dir / ID_MAP_FILE)
    totals = {"tokens": sum(r.tokens for r in results), "truncated": sum(r.truncated for r in results)}
    steps = {**extra["steps_s"], "merge": round(time.perf_counter() - merging, 3)}
    return finish_index(index, spec, version_dir, queries, (best_ids, best_scores), totals, recall_target, start,
                        {**extra, "steps_s": steps})


def _lap(start: float, steps: dict) -> float:
    return round(time.perf_counter() - start - sum(steps.values()), 3)
