"""Search latency on a chunked index: passages (group_by="passage") against documents
(group_by="doc": the best passage of each of k documents, over-fetching k * 8 passages and more).

    nice -n 10 python benchmarks/bench_search_grouped.py                 # 100k passages x 576, Flat and IVF
    python benchmarks/bench_search_grouped.py --per-doc 40 --spread 0.1  # documents crowd the top: refetches
    python benchmarks/bench_search_grouped.py --quick                    # seconds: a smoke run

The passages are written as the pipeline's chunked vectors parquet (id, embedding, doc_id, chunk,
spans, text) and indexed by the real `build_index`; search runs through `CorpusIndex.search_vectors`
(what the query service calls), one query at a time, as requests arrive. A document's passages lie
near a centre of their own, so a query's best passages crowd into few documents: the case grouping
has to fetch more for. Queries are corpus passages plus noise. Prints one JSON line per index kind
and mode: mean and p50/p95 ms per query, and for "doc" the share of queries whose first k * 8
passages held fewer than k documents (those ask the index again). With texts and spans read
(as the service answers) and without texts (`with_text=False`: the spans are still read): the
best passages of k documents lie in more row groups of the vectors parquet than k passages of
one document do, so reading them back costs more.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--passages", type=int, default=100_000)
    p.add_argument("--per-doc", type=int, default=10, help="passages per document")
    p.add_argument("--dim", type=int, default=576, help="default: the default model's (SmolLM2-135M) width")
    p.add_argument("--spread", type=float, default=0.5, help="passage noise around its document's centre")
    p.add_argument("--index", default="flat,ivf", help="comma-separated index kinds")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="5,000 passages of dim 32, 50 queries: a smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.passages, args.dim, args.queries = 5_000, 32, 50
    return args


def main(argv=None) -> list[dict]:
    import faiss
    import numpy as np
    import pyarrow.parquet as pq

    from pipelines.embed.index_build import build_index
    from pipelines.search import OVERFETCH, CorpusIndex

    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_search_grouped_"))
    lines = []
    try:
        x, docs = write_passages(work / "vectors", args)
        rng = np.random.default_rng(args.seed + 1)
        noise = rng.normal(scale=0.3 / np.sqrt(args.dim), size=(args.queries, args.dim))  # |noise| ~ 0.3
        queries = x[rng.choice(len(x), args.queries, replace=False)] + noise
        queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
        for kind in args.index.split(","):
            version = work / kind
            (version / "vectors").mkdir(parents=True)
            os.link(work / "vectors" / "part-00000.parquet", version / "vectors" / "part-00000.parquet")
            info = build_index(version, version / "vectors", args.dim, requested=kind, recall_queries=100).info
            manifest = {"version": kind, "chunking": {"chunk_tokens": 0, "chunk_overlap": 0},
                        "vectors": {"columns": pq.read_schema(next((work / "vectors").iterdir())).names}}
            index = faiss.read_index(str(version / "index.faiss"))
            for name, value in info["search_params"].items():
                faiss.ParameterSpace().set_index_parameter(index, name, value)
            id_map = pq.read_table(version / "id_map.parquet").sort_by("faiss_id")
            corpus = CorpusIndex(version, manifest, index, id_map, None)
            _, labels = index.search(queries, args.k * OVERFETCH)
            refetch = float(np.mean([len(set(docs[labels[q][labels[q] >= 0]])) < args.k for q in range(len(queries))]))
            for with_text in (True, False):
                times = {mode: [] for mode in ("passage", "doc")}
                for q in queries:  # the modes alternate query by query: both see the same load on the cores
                    for mode, spent in times.items():
                        start = time.perf_counter()
                        corpus.search_vectors(q[None], args.k, with_text=with_text, group_by=mode)
                        spent.append((time.perf_counter() - start) * 1000)
                for mode, spent in times.items():
                    line = {"bench": "search_grouped", "index": info["factory"], "group_by": mode, "k": args.k,
                            "with_text": with_text, "passages": len(x), "documents": int(docs.max()) + 1,
                            "dim": args.dim, "queries": len(queries), "ms_mean": round(float(np.mean(spent)), 2),
                            "ms_p50": round(float(np.percentile(spent, 50)), 2),
                            "ms_p95": round(float(np.percentile(spent, 95)), 2),
                            "search_params": info["search_params"], "load_avg": round(os.getloadavg()[0], 1)}
                    if mode == "doc":
                        line["share_refetched"] = round(refetch, 3)
                    print(json.dumps(line), flush=True)
                    lines.append(line)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return lines


def write_passages(folder: Path, args):
    """The chunked vectors parquet: (passage vectors, document number of each passage)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(args.seed)
    docs = np.arange(args.passages) // args.per_doc
    centres = rng.normal(size=(int(docs.max()) + 1, args.dim)).astype(np.float32)
    x = centres[docs] + rng.normal(scale=args.spread, size=(args.passages, args.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    chunk = (np.arange(args.passages) % args.per_doc).astype(np.int32)
    folder.mkdir(parents=True)
    pq.write_table(pa.table({
        "id": [f"d{d}#{c}" for d, c in zip(docs, chunk)],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), args.dim),
        "n_tokens": pa.array(np.full(args.passages, 64), pa.int32()),
        "truncated": pa.array(np.zeros(args.passages, bool)),
        "text": [f"passage {c} of d{d}" for d, c in zip(docs, chunk)],
        "doc_id": [f"d{d}" for d in docs],
        "chunk": chunk,
        "char_start": chunk * 200,
        "char_end": chunk * 200 + 250,
    }), folder / "part-00000.parquet", row_group_size=16_384)
    return x, docs


if __name__ == "__main__":
    main()
