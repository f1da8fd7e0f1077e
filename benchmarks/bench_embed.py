"""Embedding throughput: the whole Ray Data pipeline vs a bare `Encoder.encode` on the same texts.

    python benchmarks/bench_embed.py                                  # SciFact (../shared/data), default model
    python benchmarks/bench_embed.py --limit 2000 --max-length 256
    python benchmarks/bench_embed.py --limit 0 --max-length 256 --dtype bfloat16   # all of SciFact, AMX CPU
    python benchmarks/bench_embed.py --corpus sample --model out/encoder
    python benchmarks/bench_embed.py --device cuda --limit 0 --batch-size 2048   # on a GPU node
    python benchmarks/bench_embed.py --model tiny --limit 0 --index ivf       # overheads at scale
    python benchmarks/bench_embed.py --corpus wikitext --limit 4 --chunk-tokens 128 --chunk-overlap 16  # long docs

Prints one JSON line:
  bare_tokens_per_s        Encoder.encode in this process (all cores / the GPU), model already loaded
  pipeline_tokens_per_s    tokens / wall time of the pipeline's embed stage (read, tokenize, actor
                           start-up with model load, embed, write)
  pipeline_total_tokens_per_s  tokens / the whole run (scan, embed, index, manifest, publish)
  ratio, ratio_total       pipeline over bare
  ratio_steady             the actors' tokens/s while embedding (start-up excluded) over bare
  padding_share            padded positions / all positions in the actors' micro-batches
  recall_at_10             the index's recall against exact search
Token counts are real (non-padding) tokens after truncation to --max-length.

With --chunk-tokens N (long documents: `--corpus wikitext` takes the WikiText-2 test articles,
~5,000 tokens each, as documents) every document is split into passages of at most N tokens
(title and instruction counted, nothing truncated) and both sides embed the passages; the bare
side's time includes the splitting (`bare_split_s` of it). Added to the line:
  passages, passages_per_doc   passages embedded (the manifest's passages_embedded)
  bare_passages_per_s          passages / the bare time
  pipeline_passages_per_s      passages / the pipeline's embed stage (pipeline_total_passages_per_s:
                               the whole run); tokens/s as above, counting the passages' tokens
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
REPO = Path(__file__).resolve().parents[1]


def scifact_parquet(out: Path, limit: int | None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = Path(os.environ.get("L2V_SHARED_DATA", REPO.parent / "shared" / "data")) / "scifact" / "corpus.jsonl"
    if not source.is_file():
        raise SystemExit(f"SciFact not found at {source}; use --corpus sample (or set L2V_SHARED_DATA)")
    rows = []
    with open(source) as fh:
        for line in fh:
            doc = json.loads(line)
            rows.append({"id": doc["_id"], "title": doc.get("title") or None, "text": doc["text"]})
            if limit and len(rows) >= limit:
                break
    path = out / "scifact.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def wikitext_articles(source: Path) -> list[dict]:
    """WikiText-2 raw text -> articles {title, text}: a line ` = Title = ` opens an article, every
    other non-blank line is a paragraph (section headings ` = = Section = = ` stay, as lines)."""
    articles: list[dict] = []
    for line in source.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("= ") and line.endswith(" =") and not line.startswith("= ="):
            articles.append({"title": line.strip("= ").strip(), "paragraphs": []})
        elif line and articles:
            articles[-1]["paragraphs"].append(line)
    return [{"title": a["title"], "text": "\n\n".join(a["paragraphs"])} for a in articles if a["paragraphs"]]


def wikitext_parquet(out: Path, limit: int | None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = Path(os.environ.get("L2V_SHARED_DATA", REPO.parent / "shared" / "data")) / "wikitext2" / "wiki.test.raw"
    if not source.is_file():
        raise SystemExit(f"WikiText-2 not found at {source}; use --corpus sample (or set L2V_SHARED_DATA)")
    articles = wikitext_articles(source)[:limit]
    rows = [{"id": f"wiki-{i}", **a} for i, a in enumerate(articles)]
    path = out / "wikitext.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def sample_parquet(out: Path, limit: int | None) -> Path:
    from jobs.demo import step_build_corpus

    return step_build_corpus(out, limit or 1000)


CORPORA = {"scifact": scifact_parquet, "sample": sample_parquet, "wikitext": wikitext_parquet}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", choices=list(CORPORA), default="scifact",
                   help="wikitext: the WikiText-2 test articles as long documents (with --chunk-tokens)")
    p.add_argument("--limit", type=int, default=500, help="documents (0 = all)")
    p.add_argument("--model", default=None, help="encoder folder; 'tiny' = a tiny random encoder (pipeline overheads)")
    p.add_argument("--index", default="auto", choices=["auto", "flat", "ivf", "ivfpq", "hnsw"])
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=512, help="rows per embed batch (sorted inside)")
    p.add_argument("--batch-tokens", type=int, default=8192)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None,
                   help="default: bf16 on CUDA, float32 on CPU; bfloat16 is ~3x faster on AMX CPUs")
    p.add_argument("--num-actors", type=int, default=None)
    p.add_argument("--chunk-tokens", type=int, default=None, help="split documents into passages of N tokens")
    p.add_argument("--chunk-overlap", type=int, default=0, help="tokens consecutive passages share")
    args = p.parse_args(argv)
    if args.chunk_tokens is None and args.chunk_overlap:
        p.error("--chunk-overlap needs --chunk-tokens")
    if args.chunk_tokens is not None and not 8 <= args.chunk_tokens <= args.max_length:
        p.error(f"--chunk-tokens must be between 8 and --max-length ({args.max_length}), not {args.chunk_tokens}")
    return args


def bare_passages(encoder, table, chunk_tokens: int, overlap: int):
    """The documents' passages as the pipeline builds them (title prepended, no instruction) ->
    (TokenizedBatch of every passage, seconds spent splitting)."""
    from l2v_core import TokenizedBatch, split_document

    start = time.perf_counter()
    passages = [p for title, text in zip(table.column("title").to_pylist(), table.column("text").to_pylist())
                for p in split_document(encoder.tokenizer, text, chunk_tokens=chunk_tokens, overlap=overlap,
                                        title=title)]
    batch = TokenizedBatch(input_ids=[p.input_ids for p in passages], pool_mask=[p.pool_mask for p in passages],
                           n_tokens=[len(p.input_ids) for p in passages], truncated=[False] * len(passages))
    return batch, time.perf_counter() - start


def main(argv=None) -> int:
    args = parse_args(argv)

    import pyarrow.parquet as pq
    import ray
    import torch

    from l2v_core import Encoder, pick_device_and_dtype
    from pipelines.embed import EmbedConfig, run_embed
    from pipelines.embed.scan import compose_text

    work = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    if args.model == "tiny":
        from l2v_core.testing import save_tiny_encoder

        args.model = str(save_tiny_encoder(work / "tiny_encoder"))
    corpus = CORPORA[args.corpus](work, args.limit or None)
    table = pq.read_table(corpus)
    texts = [compose_text(t, x) for t, x in zip(table.column("title").to_pylist(), table.column("text").to_pylist())]

    # bare encoder, in this process
    device, dtype = pick_device_and_dtype(args.device, args.dtype)
    encoder = Encoder.from_pretrained(args.model, max_length=args.max_length, device=device, dtype=dtype)
    encoder.encode(texts[:8], batch_tokens=args.batch_tokens)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    tokens = None if args.chunk_tokens else sum(encoder.tokenize(texts).n_tokens)
    start = time.perf_counter()
    if args.chunk_tokens:  # splitting is part of the work: the pipeline's tokenize stage does it
        passages, split_s = bare_passages(encoder, table, args.chunk_tokens, args.chunk_overlap)
        encoder.encode_tokenized(passages, batch_tokens=args.batch_tokens)
        tokens = sum(passages.n_tokens)
    else:
        encoder.encode(texts, batch_tokens=args.batch_tokens)
    if device.type == "cuda":
        torch.cuda.synchronize()
    bare_s = time.perf_counter() - start
    del encoder

    # the whole pipeline on the same texts
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    cfg = EmbedConfig(input=[str(corpus)], output=str(work / "out"), model=args.model, title_column="title",
                      max_length=args.max_length, batch_size=args.batch_size, batch_tokens=args.batch_tokens,
                      device=args.device, dtype=args.dtype, num_actors=args.num_actors, index=args.index,
                      cpu_threads=None if device.type == "cuda" else torch.get_num_threads(),
                      chunk_tokens=args.chunk_tokens, chunk_overlap=args.chunk_overlap)
    result = run_embed(cfg)
    m = result.manifest
    assert m["throughput"]["tokens"] == tokens, (m["throughput"]["tokens"], tokens)
    embed_s, total_s = m["throughput"]["embed_stage_s"], m["timings_s"]["total"]
    bare = tokens / bare_s
    line = {
        "corpus": args.corpus, "docs": len(texts), "tokens": tokens, "model": m["encoder"]["identity"]["model"],
        "max_length": args.max_length, "device": str(device), "dtype": str(dtype),
        "torch_threads": torch.get_num_threads(),
        "bare_s": round(bare_s, 2), "bare_tokens_per_s": round(bare, 1),
        "pipeline_embed_stage_s": embed_s, "pipeline_tokens_per_s": round(tokens / embed_s, 1),
        "pipeline_total_s": total_s, "pipeline_total_tokens_per_s": round(tokens / total_s, 1),
        "ratio": round(tokens / embed_s / bare, 3), "ratio_total": round(tokens / total_s / bare, 3),
        "actor_busy_tokens_per_s": m["throughput"]["actor_busy_tokens_per_s"],
        "ratio_steady": round(m["throughput"]["actor_busy_tokens_per_s"] / bare, 3),
        "padding_share": m["throughput"]["padding_share"], "index": m["index"]["factory"],
        "recall_at_10": m["index"]["recall_at_10"], "rows_truncated": m["counts"]["rows_truncated"],
    }
    if args.chunk_tokens:
        n = m["counts"]["passages_embedded"]
        assert n == len(passages), (n, len(passages))
        line |= {
            "chunk_tokens": args.chunk_tokens, "chunk_overlap": args.chunk_overlap, "passages": n,
            "passages_per_doc": round(n / len(texts), 2), "bare_split_s": round(split_s, 2),
            "bare_passages_per_s": round(n / bare_s, 2), "pipeline_passages_per_s": round(n / embed_s, 2),
            "pipeline_total_passages_per_s": round(n / total_s, 2),
        }
    print(json.dumps(line))
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
