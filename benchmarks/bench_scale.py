"""Growth curve of the plan: driver memory and plan time as the corpus grows (issue 10).

For each size it generates a synthetic corpus of short rows (parquet, --files files, about 2%
duplicate ids spread over files, 1% bad rows), then runs `jobs/embed_corpus.py --plan-only` as a
subprocess on the local Ray (or the cluster in RAY_ADDRESS), sampling the driver process's RSS
every 50 ms:

1. full: --plan-only on the corpus (nothing published yet).
2. publish a version cheaply: its vectors are written from that plan's own plan/embed rows
   (id, content_hash; a 4-d zero embedding), with a manifest and CURRENT written through the
   modules that own them (`layout.py`, `manifest.py`, `stages.vectors_schema`). No model runs: the
   diff only reads (id, content_hash), and --plan-only takes the published vector identity.
3. the corpus changes: 1% of rows get a new text, 0.5% are deleted.
4. incremental: --plan-only --incremental against the published version.

Prints one JSON line per size: driver peak RSS (MB), wall and plan-step seconds, rows/s, and the
CPU seconds of the plan's tasks (a cost that does not depend on what else the machine runs).

    nice -n 10 python benchmarks/bench_scale.py --sizes 1M,4M,16M
    python benchmarks/bench_scale.py --quick          # seconds: 2,000 rows, 4 files (tests/test_bench_scale.py)
    python benchmarks/bench_scale.py --sizes 1M --compare /path/to/checkout-before-issue-10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TOPICS = pa.array(["cats", "ships", "rivers", "algebra", "bread", "violins", "glaciers", "chess", "tulips", "comets"])
DIM = 4


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("KM")) * scale)


# ------------------------------------------------------------------ corpus
def corpus_rows(start: int, stop: int, total: int, changed: bool) -> pa.Table:
    """Rows start..stop of the corpus. ~2% duplicate ids (the id of a row elsewhere in the corpus,
    often another file), ~1% bad rows (empty or null text); with `changed`, 1% of texts differ
    and 0.5% of rows are gone."""
    i = np.arange(start, stop, dtype=np.int64)
    id_number = np.where(i % 50 == 17, (i * 7919) % total, i)
    ids = pc.binary_join_element_wise("d", pc.cast(pa.array(id_number), pa.string()), "")
    texts = pc.binary_join_element_wise(
        "note", pc.cast(pa.array(i), pa.string()), "about", TOPICS.take(pa.array(i % 10)),
        "and", TOPICS.take(pa.array((i * 7 + 3) % 10)), " ")
    if changed:
        texts = pc.if_else(pa.array(i % 100 == 42), pc.binary_join_element_wise(texts, "(revised)", " "), texts)
    texts = pc.if_else(pa.array(i % 200 == 13), pa.scalar("   "), texts)
    texts = pc.if_else(pa.array(i % 200 == 113), pa.scalar(None, pa.string()), texts)
    table = pa.table({"id": ids, "text": texts})
    if changed:
        table = table.filter(pa.array(i % 200 != 99))
    return table


def write_corpus(folder: Path, rows: int, files: int, changed: bool) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    per = -(-rows // files)
    for f in range(files):
        start, stop = f * per, min(rows, (f + 1) * per)
        pq.write_table(corpus_rows(start, stop, rows, changed), folder / f"part-{f:05d}.parquet")


# ------------------------------------------------------------------ publish a version from a plan
def publish_from_plan(output: Path, plan_dir: Path) -> None:
    """A published version whose vectors are the plan's rows to embed, written through the modules
    that own each format. No model: 4-d zero vectors (the diff reads only id and content_hash)."""
    from pipelines.embed.batch_udfs import vectors_schema
    from pipelines.embed.layout import OutputLayout
    from pipelines.embed.manifest import vector_identity
    from pipelines.embed.plan_tasks import EMBED

    layout = OutputLayout(output)
    name, version_dir = layout.new_version()
    schema = vectors_schema(DIM, store_text=False)
    (version_dir / "vectors").mkdir()
    rows = 0
    for n, part in enumerate(sorted((plan_dir / EMBED).glob("*.parquet"))):
        keys = pq.read_table(part, columns=["id", "content_hash"])
        zeros = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(keys.num_rows * DIM, np.float32)), DIM)
        table = pa.Table.from_arrays(
            [keys.column("id"), zeros, keys.column("content_hash"), pa.array(np.ones(keys.num_rows, np.int32)),
             pa.array(np.zeros(keys.num_rows, bool))], schema=schema)
        pq.write_table(table, version_dir / "vectors" / f"part-{n:05d}.parquet")
        rows += keys.num_rows
    identity = vector_identity({"model": "bench_scale synthetic", "dim": DIM}, "float32", None, None)
    layout.write_manifest(name, {
        "format": "l2v-embed/1", "version": name, "vector_identity": identity,
        "vectors": {"dir": "vectors", "dim": DIM, "rows": rows, "columns": schema.names},
        "counts": {"rows_truncated": 0}, "index": {"count": rows}, "quarantine": {},
    })
    layout.publish(name)


# ------------------------------------------------------------------ one measured run
def plan_only(corpus: Path, output: Path, incremental: bool, env: dict) -> dict:
    command = [sys.executable, str(REPO / "jobs" / "embed_corpus.py"), "--input", str(corpus),
               "--output", str(output), "--no-store-text", "--plan-only", "--json"]
    if incremental:
        command.append("--incremental")
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = _sample_rss(proc)
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"plan-only run failed ({proc.returncode}):\n{err[-3000:]}")
    summary = json.loads(out.strip().splitlines()[-1])
    seconds = summary["seconds"]
    plan_s = seconds["scan"] + seconds["resolve"]
    return {
        "driver_peak_rss_mb": round(peak / 2**20, 1), "wall_s": round(wall, 2), "plan_s": round(plan_s, 2),
        "scan_s": seconds["scan"], "resolve_s": seconds["resolve"],
        "tasks_cpu_s": round(seconds["scan_cpu"] + seconds["resolve_cpu"], 2),
        "scan_cpu_s": seconds["scan_cpu"], "resolve_cpu_s": seconds["resolve_cpu"],
        "rows_per_s": round(summary["rows_read"] / plan_s) if plan_s else None,
        "partitions": summary["partitions"],
        "rows_read": summary["rows_read"], "rows_to_embed": summary["rows_to_embed"],
        "rows_reused": summary["rows_reused"], "rows_deleted": summary["rows_deleted"],
        "quarantine_by_reason": summary["quarantine_by_reason"], "plan_dir": summary["plan_dir"],
    }


def _sample_rss(proc: subprocess.Popen, every_s: float = 0.05) -> int:
    """Peak RSS of the driver process (not its Ray workers) until it exits."""
    peak = 0
    stop = threading.Event()

    def sample():
        nonlocal peak
        try:
            handle = psutil.Process(proc.pid)
            while not stop.is_set():
                peak = max(peak, handle.memory_info().rss)
                time.sleep(every_s)
        except psutil.Error:
            pass

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    proc.wait()
    stop.set()
    thread.join()
    return peak


MAIN_PLAN = """
import sys, resource, psutil
from pipelines.embed.scan import Columns, scan_file, plan_rows
from pipelines.sources import list_parquet_files
before = psutil.Process().memory_info().rss
plan = plan_rows([scan_file(f, Columns("id", "text")) for f in list_parquet_files([sys.argv[1]])])
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, plan.rows_to_embed)
"""


def main_design(corpus: Path, checkout: Path) -> dict:
    """The driver-side plan of an older checkout (scan results gathered, plan_rows on the driver),
    in one process as its driver did it, without Ray: its peak RSS and the growth over imports."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    done = subprocess.run([sys.executable, "-c", MAIN_PLAN, str(corpus)], env=env, cwd=checkout,
                          capture_output=True, text=True, check=True)
    before, peak, planned = (int(x) for x in done.stdout.split())
    return {"driver_peak_rss_mb": round(peak / 2**20, 1), "growth_mb": round((peak - before) / 2**20, 1),
            "rows_planned": planned}


def bench_size(rows: int, files: int, workdir: Path, env: dict, compare: Path | None = None) -> dict:
    folder = workdir / f"n{rows}"
    shutil.rmtree(folder, ignore_errors=True)
    corpus, output = folder / "corpus", folder / "out"
    started = time.perf_counter()
    write_corpus(corpus, rows, files, changed=False)
    generate_s = time.perf_counter() - started
    full = plan_only(corpus, output, incremental=False, env=env)
    before = main_design(corpus, compare) if compare else None
    started = time.perf_counter()
    publish_from_plan(output, Path(full.pop("plan_dir")))
    write_corpus(corpus, rows, files, changed=True)
    setup_s = time.perf_counter() - started
    incremental = plan_only(corpus, output, incremental=True, env=env)
    incremental.pop("plan_dir")
    shutil.rmtree(folder, ignore_errors=True)
    return {"bench": "scale", "rows": rows, "files": files, "generate_s": round(generate_s, 2),
            "publish_and_change_s": round(setup_s, 2), "full": full, "incremental": incremental,
            **({"driver_side_plan_of": str(compare), "driver_side_plan": before} if compare else {}),
            "cpus": os.cpu_count()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1M,4M,16M", help="corpus sizes in rows, e.g. 1M,4M,16M")
    p.add_argument("--files", type=int, default=16, help="parquet files per corpus")
    p.add_argument("--workdir", help="where corpora are written (default: a temporary folder)")
    p.add_argument("--quick", action="store_true", help="2,000 rows in 4 files: checks the script runs")
    p.add_argument("--compare", help="a checkout whose plan ran on the driver (scan.plan_rows), e.g. the main "
                                     "branch before issue 10: its peak RSS on the same corpus is added")
    args = p.parse_args(argv)
    sizes = [2000] if args.quick else [parse_size(s) for s in args.sizes.split(",")]
    files = 4 if args.quick else args.files
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("RAY_ADDRESS", "local")  # a fresh local Ray, never a cluster someone left running here
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for rows in sizes:
            compare = Path(args.compare).resolve() if args.compare else None
            print(json.dumps(bench_size(rows, files, Path(tmp), env, compare)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
