"""Full run vs incremental run with 1% of documents changed, on the same corpus.

    python benchmarks/bench_reindex.py                          # SciFact (5,183 docs), default model
    python benchmarks/bench_reindex.py --model tiny --limit 5000   # a tiny random encoder: pipeline overheads only

Prints one JSON line: full_s, incremental_s, their ratio (goal < 0.15), and the incremental
run's counts (rows embedded / reused / deleted).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=0, help="documents (0 = all)")
    p.add_argument("--model", default=None, help="encoder folder; 'tiny' = a tiny random encoder")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--changed", type=float, default=0.01, help="share of documents changed")
    p.add_argument("--dtype", default=None, help="embed actors' dtype (bfloat16: ~3x faster on AMX CPUs)")
    args = p.parse_args(argv)

    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    from bench_embed import scifact_parquet

    from pipelines.embed import EmbedConfig, run_embed

    work = Path(tempfile.mkdtemp(prefix="bench_reindex_"))
    model = args.model
    if model == "tiny":
        from l2v_core.testing import save_tiny_encoder

        model = str(save_tiny_encoder(work / "tiny_encoder"))
    corpus = scifact_parquet(work, args.limit or None)
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    cfg = EmbedConfig(input=[str(corpus)], output=str(work / "out"), model=model, title_column="title",
                      max_length=args.max_length, dtype=args.dtype, incremental=True)
    start = time.perf_counter()
    run_embed(cfg)
    full_s = time.perf_counter() - start

    table = pq.read_table(corpus)
    n_changed = max(1, int(table.num_rows * args.changed))
    texts = table.column("text").to_pylist()
    for i in range(n_changed):
        texts[i * (table.num_rows // n_changed)] += " (revised)"
    pq.write_table(table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts)), corpus)
    start = time.perf_counter()
    result = run_embed(cfg)
    incremental_s = time.perf_counter() - start
    c = result.counts
    print(json.dumps({
        "docs": table.num_rows, "changed": n_changed, "model": result.manifest["encoder"]["identity"]["model"],
        "full_s": round(full_s, 2), "incremental_s": round(incremental_s, 2),
        "ratio": round(incremental_s / full_s, 3), "rows_embedded": c["rows_embedded"],
        "rows_reused": c["rows_reused"], "rows_deleted": c["rows_deleted"],
    }))
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
