"""The index built on 1 and on 2 workers: time per step and recall@10, over random unit vectors.

    nice -n 10 python benchmarks/bench_index_build.py                     # 2M x 576 (the default model's dim), IVF-PQ
    python benchmarks/bench_index_build.py --vectors 200000 --workers 1,2
    python benchmarks/bench_index_build.py --quick                        # seconds: 6k x 16, a smoke run

The vectors are written as the pipeline's vectors parquet by Ray tasks (never on the driver):
clustered random unit vectors (Gaussian blobs around random centres, normalized), which have the
neighbourhood structure real embeddings have; uniform random vectors in 576 dimensions have none
(every point is about equally far from every other), which no IVF index can search well. Then,
for each worker count W, `index_shards.build_index_on_workers(shards=W)` builds the index the
pipeline would (`--index ivfpq`: IVF-PQ as `choose_index` sizes it) over the same files:

- W = 1: one task does every step (the serial `build_index`), with faiss on all the node's CPUs;
- W > 1: sample and add run as W tasks, each with faiss' OpenMP threads set to its CPU share
  (cluster CPUs / W), then one merge task; training runs in one task with the node's CPUs.

So a 1-worker build already uses every core for faiss' own parallel parts (training, the
coarse assignment and PQ encoding of the adds, the recall search) and the comparison is fair.
Prints one JSON line per worker count: steps_s (sample, train, add, merge, tune_write), total_s,
recall@10 and the nprobe it needed, the thread settings; and a first line for the data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROW_GROUP = 16_384


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vectors", type=int, default=2_000_000)
    p.add_argument("--dim", type=int, default=576, help="default: the default model's (SmolLM2-135M) width")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts to compare")
    p.add_argument("--index", default="ivfpq", choices=["ivf", "ivfpq"])
    p.add_argument("--files", type=int, default=16, help="vectors parquet files")
    p.add_argument("--clusters", type=int, default=1000, help="Gaussian blobs the vectors are drawn around")
    p.add_argument("--recall-queries", type=int, default=200)
    p.add_argument("--recall-target", type=float, default=0.95)
    p.add_argument("--memory-budget-gib", type=float, default=4.0, help="as --index-memory: sizes the PQ codes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="folder for the vectors and indexes (default: a temp dir, removed)")
    p.add_argument("--quick", action="store_true", help="6,000 vectors of dim 16 in 3 files: a smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.vectors, args.dim, args.files, args.clusters, args.recall_queries = 6_000, 16, 3, 30, 50
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    import ray

    from pipelines.embed import index_shards
    from pipelines.embed.index_shards import build_index_on_workers

    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_index_build_"))
    vectors_dir = work / "vectors"
    # start the index tasks' workers (own runtime env) once, so no worker count pays for it
    ray.get([index_shards._task(1).remote(1, os.getpid) for _ in range(int(ray.cluster_resources()["CPU"]))])
    started = time.perf_counter()
    write_vectors(vectors_dir, args.vectors, args.dim, args.files, args.clusters, args.seed)
    lines = [{"bench": "index_build", "step": "data", "vectors": args.vectors, "dim": args.dim, "files": args.files,
              "generate_s": round(time.perf_counter() - started, 1), "cpus": ray.cluster_resources().get("CPU"),
              "machine": platform.processor() or platform.machine()}]
    print(json.dumps(lines[0]), flush=True)
    try:
        for workers in [int(w) for w in args.workers.split(",")]:
            version = work / f"workers-{workers}"
            shutil.rmtree(version, ignore_errors=True)
            version.mkdir(parents=True)
            load_before = os.getloadavg()[0]
            start = time.perf_counter()
            info = build_index_on_workers(version, vectors_dir, args.dim, requested=args.index,
                                          memory_budget=int(args.memory_budget_gib * 2**30),
                                          recall_queries=args.recall_queries, recall_target=args.recall_target,
                                          seed=args.seed, shards=workers).info
            total = time.perf_counter() - start
            line = {"bench": "index_build", "workers": info["workers"],
                    "threads_per_worker": info["threads_per_worker"], "vectors": info["count"], "dim": args.dim,
                    "factory": info["factory"],
                    "train_size": info["train_size"], "steps_s": info["steps_s"], "total_s": round(total, 1),
                    "recall_at_10": info["recall_at_10"], "search_params": info["search_params"],
                    "tuning": info["tuning"], "shards": info.get("shards"),
                    # the machine's 1-minute load before and after: other work on the cores skews times
                    "load_avg": [round(load_before, 1), round(os.getloadavg()[0], 1)]}
            print(json.dumps(line), flush=True)
            lines.append(line)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return lines


def write_vectors(folder: Path, n: int, dim: int, files: int, clusters: int, seed: int) -> None:
    """`files` vectors parquet files of clustered unit vectors, each written by a Ray task."""
    import ray

    folder.mkdir(parents=True, exist_ok=True)
    task = ray.remote(num_cpus=1)(_write_file)
    bounds = [i * n // files for i in range(files + 1)]
    ray.get([task.remote(folder / f"part-{i:05d}.parquet", bounds[i], bounds[i + 1], dim, clusters, seed)
             for i in range(files)])


def _write_file(path: Path, start: int, stop: int, dim: int, clusters: int, seed: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    centres = np.random.default_rng(seed).normal(size=(clusters, dim)).astype(np.float32)
    rng = np.random.default_rng([seed, start])
    with pq.ParquetWriter(path.with_suffix(".tmp"), _schema(dim)) as writer:
        for lo in range(start, stop, ROW_GROUP):
            rows = min(ROW_GROUP, stop - lo)
            x = centres[rng.integers(0, clusters, rows)] + rng.normal(scale=0.6, size=(rows, dim)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            writer.write_table(pa.table({
                "id": pa.array([f"v{i}" for i in range(lo, lo + rows)]),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), dim),
                "n_tokens": pa.array(np.full(rows, 16), pa.int32()),
                "truncated": pa.array(np.zeros(rows, bool)),
            }, schema=_schema(dim)))
    os.replace(path.with_suffix(".tmp"), path)


def _schema(dim: int):
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.float32(), dim)), ("n_tokens", pa.int32()),
                      ("truncated", pa.bool_())])


if __name__ == "__main__":
    main()
