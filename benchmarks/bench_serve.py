"""Closed-loop load on the Ray Serve search service: batched vs --max-batch-size 1.

    python benchmarks/bench_serve.py                         # SciFact (300 docs), default model
    python benchmarks/bench_serve.py --index out/index       # an index you already published
    python benchmarks/bench_serve.py --requests 100 --concurrency 1 8

For each batch size (32, then 1) and each concurrency (1, 8, 32), that many clients each send
POST /search (one query, k=10) as soon as their previous answer came, until --requests answers
in all (so it stops by itself). Prints one JSON line: per run req/s, p50/p95/p99 latency (ms) and
errors, and the goals (batched >= 2x the req/s of unbatched at the highest concurrency, zero
errors, p99 <= 3x p50).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # bench_embed's corpus helpers (benchmarks is not a package)


FALLBACK_QUERIES = ["how do vaccines work?", "effects of sleep on memory", "gene expression in cancer cells",
                    "air pollution and asthma", "protein folding", "antibiotic resistance in bacteria"]


def queries_and_index(args, work: Path) -> tuple[list[str], str]:
    data = Path(os.environ.get("L2V_SHARED_DATA", REPO.parent / "shared" / "data")) / "scifact"
    queries = FALLBACK_QUERIES
    if (data / "queries.jsonl").is_file():
        with open(data / "queries.jsonl") as fh:
            queries = [json.loads(line)["text"] for line in fh][:500]
    if args.index:
        return queries, args.index
    from bench_embed import scifact_parquet  # exits with a clear message when SciFact is absent

    from pipelines.embed import EmbedConfig, run_embed

    corpus = scifact_parquet(work, args.docs)
    model = args.model
    if model == "tiny":
        from l2v_core.testing import save_tiny_encoder

        model = str(save_tiny_encoder(work / "tiny_encoder"))
    output = work / "index"
    print(f"building an index of {args.docs} SciFact documents...", file=sys.stderr)
    run_embed(EmbedConfig(input=[str(corpus)], output=str(output), model=model, title_column="title",
                          max_length=128))
    return queries, str(output)


def load(port: int, queries: list[str], concurrency: int, requests: int, k: int) -> dict:
    """A closed loop: `concurrency` clients, `requests` answers in all."""
    latencies, errors, lock = [], [], threading.Lock()
    counter = iter(range(requests))

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            body = json.dumps({"query": queries[i % len(queries)], "k": k})
            start = time.perf_counter()
            try:
                conn.request("POST", "/search", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                error = None if response.status == 200 else f"status {response.status}"
            except (OSError, http.client.HTTPException) as e:
                error = repr(e)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            elapsed = time.perf_counter() - start
            with lock:
                if error is None:
                    latencies.append(elapsed)
                else:
                    errors.append(error)
        conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = sorted(latencies)

    def pct(q):
        return round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None

    return {"concurrency": concurrency, "requests": requests, "req_per_s": round(len(lat) / wall, 2),
            "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99), "errors": len(errors)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--index", default=None, help="a published index (default: build one from SciFact)")
    p.add_argument("--docs", type=int, default=300, help="SciFact documents when building the index")
    p.add_argument("--model", default=None,
                   help="encoder when building the index (default: the default model; 'tiny': a tiny random one)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=300, help="answers per run")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 1], help="--max-batch-size values to compare")
    p.add_argument("--batch-wait-ms", type=float, default=10.0)
    p.add_argument("--replica-cpus", type=float, default=1.0)
    p.add_argument("--max-padding", type=float, default=0.1, help="padding share a forward pass may hold")
    p.add_argument("--k", type=int, default=10)
    args = p.parse_args(argv)

    import ray
    from ray import serve

    from pipelines.serve import ServiceConfig, build_app

    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    queries, index = queries_and_index(args, work)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    runs = []
    try:
        for batch_size in args.batch_sizes:
            config = ServiceConfig(index=index, max_batch_size=batch_size, batch_wait_ms=args.batch_wait_ms,
                                   replica_cpus=args.replica_cpus, max_padding=args.max_padding)
            serve.run(build_app(config), name="bench", route_prefix="/")
            load(port, queries, 4, 20, args.k)  # warm up: first passes, connections
            for concurrency in args.concurrency:
                result = {"max_batch_size": batch_size, **load(port, queries, concurrency, args.requests, args.k)}
                print(json.dumps(result), file=sys.stderr, flush=True)
                runs.append(result)
            serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()

    top = max(args.concurrency)
    by = {(r["max_batch_size"], r["concurrency"]): r for r in runs}
    batched, unbatched = by.get((max(args.batch_sizes), top)), by.get((1, top))
    ratio = round(batched["req_per_s"] / unbatched["req_per_s"], 2) if batched and unbatched else None
    print(json.dumps({
        "bench": "serve", "index": index, "model": args.model or "default", "replica_cpus": args.replica_cpus,
        "max_padding": args.max_padding,
        "batch_wait_ms": args.batch_wait_ms, "cpus": os.cpu_count(), "runs": runs,
        "batched_over_unbatched_at_top_concurrency": ratio,
        "goals": {"batched_2x": ratio is not None and ratio >= 2, "zero_errors": all(r["errors"] == 0 for r in runs),
                  "p99_within_3x_p50": all(r["p99_ms"] is not None and r["p99_ms"] <= 3 * r["p50_ms"] for r in runs)},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
