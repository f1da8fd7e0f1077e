"""Embed a parquet corpus into vectors + a FAISS index, published as a new version of --output.

On this machine (starts a local Ray; `l2v-embed` is the same as `python jobs/embed_corpus.py`):

    l2v-embed --input data/corpus/ --output out/index --model out/adapt/encoder

On a cluster (Ray 2.60 turns token auth on for `ray start`; see docs/embed.md):

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/embed_corpus.py --input s3://bucket/corpus/ --output /shared/index --model /shared/encoder

Nightly, reusing unchanged documents' vectors: add --incremental (docs/embed.md). Before a big
run, `--plan-only` scans, dedupes and diffs on the cluster and prints what the run would do (rows to
embed, reuse, delete, quarantine by reason) without loading the model or publishing anything.

Settings can come from a YAML file of EmbedConfig fields (`--config`); flags given on the
command line win. Exit codes: below (and deploy/README.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pipelines.cli import EXIT_LOCKED, UsageError, job_parser, run_job, show_config_defaults

EXIT_CODES = {
    0: "published; or, with --incremental, nothing changed (nothing published, the published version stays); "
       "or --plan-only printed the plan",
    2: "bad arguments, settings or input: a missing column, an unreadable file, an input matching no file, "
       "--output naming a file, settings that leave no room for text, more actors than the cluster holds, "
       "an index that cannot fit --index-memory, a damaged published version with --incremental, an "
       "--incremental run that would delete every document",
    EXIT_LOCKED: "another run holds the output's lock",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = job_parser(__doc__, exit_codes=EXIT_CODES)
    p.add_argument("--config", help="YAML file of EmbedConfig fields")
    p.add_argument("--input", nargs="+", help="parquet files, folders, globs or URIs")
    p.add_argument("--output", help="output root (versions/, CURRENT)")
    p.add_argument("--model", help="exported encoder folder, model folder or name (default: SmolLM2-135M-Instruct)")
    p.add_argument("--id-column", help="column of document ids (strings or integers)")
    p.add_argument("--text-column", help="column of texts to embed")
    p.add_argument("--title-column", help="optional column put before the text ('title\\n\\ntext')")
    p.add_argument("--instruction", help="instruction before each document (default: the encoder's 'document' one)")
    p.add_argument("--max-length", type=int, help="override the encoder's max tokens per text")
    p.add_argument("--chunk-tokens", type=int,
                   help="split documents into passages of at most N tokens and embed every passage (default: off)")
    p.add_argument("--chunk-overlap", type=int, help="tokens of text consecutive passages share (default 0)")
    p.add_argument("--index", choices=["auto", "flat", "ivf", "ivfpq", "hnsw"])
    p.add_argument("--index-memory", help="index memory budget, e.g. 4GiB")
    p.add_argument("--num-actors", type=int, help="embed actors (default: one per GPU, else 1)")
    p.add_argument("--cpu-threads", type=int, help="torch threads per CPU actor (default: the node's cores / actors)")
    p.add_argument("--actor-cpus", type=float, help="CPUs Ray reserves per embed actor (default 1)")
    p.add_argument("--batch-size", type=int, help="rows per embed batch (sorted by length inside)")
    p.add_argument("--batch-tokens", type=int, help="padded tokens per forward pass")
    p.add_argument("--device", help="embed actors' device (default: cuda when the cluster has GPUs, else cpu)")
    p.add_argument("--dtype", help="embed actors' dtype (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--skip-bad-files", action="store_true", default=None,
                   help="skip unreadable files (listed in the manifest's input.bad_files) instead of failing")
    p.add_argument("--no-store-text", dest="store_text", action="store_false", default=None,
                   help="do not keep texts in the vectors parquet (search then shows ids only)")
    p.add_argument("--keep-versions", type=int,
                   help="keep the newest N complete versions plus the published one (default 3)")
    p.add_argument("--recall-queries", type=int, help="sampled vectors for the index's recall@10 (default 200)")
    p.add_argument("--incremental", action="store_true", default=None,
                   help="reuse the published version's vectors for unchanged documents; drop deleted ids")
    p.add_argument("--plan-only", action="store_true", default=None,
                   help="scan, dedupe and diff, write the plan to an unpublished version folder and print what the "
                        "run would do; loads no model, embeds and publishes nothing")
    p.add_argument("--plan-partitions", type=int,
                   help="id partitions of the plan's dedupe and diff (default: about one per million rows)")
    p.add_argument("--json", action="store_true", help="print the manifest's counts as JSON at the end")
    from pipelines.embed.config import EmbedConfig  # pydantic only: no Ray, no torch

    show_config_defaults(p, EmbedConfig)
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace):
    from pipelines.embed import EmbedConfig

    fields = {k: v for k, v in vars(args).items() if k not in ("config", "json") and v is not None}
    if args.config:
        return EmbedConfig.from_yaml(args.config, **fields)
    if "input" not in fields or "output" not in fields:
        raise UsageError("give --input and --output (or --config FILE)")
    return EmbedConfig(**fields)


def run(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which CPU build it loads: noise for users
    cfg = config_from_args(args)
    for item in cfg.input:  # a local path that is not there fails now, before Ray and torch are imported
        if "://" not in item and not any(ch in item for ch in "*?[") and not Path(item).expanduser().exists():
            raise UsageError(f"input {item} does not exist; give a .parquet file, a folder holding some, or a glob")
    from pipelines.embed import BadFileError, run_embed

    try:
        result = run_embed(cfg)
    except (BadFileError, ValueError) as err:
        # the run's own checks (columns, settings, placement, index memory, a damaged published
        # version) raise these before anything is published; a bug surfaces as another type
        raise UsageError(str(err)) from err
    if args.json and result.plan is not None and cfg.plan_only:
        print(json.dumps({"plan_only": True, **result.plan.to_json()}))
    elif args.json:
        print(json.dumps({"version": result.version, "published": result.published, **result.counts,
                          "index": result.manifest["index"],
                          "throughput": result.manifest["throughput"]}))
    return 0


def main(argv=None) -> int:
    return run_job(run, argv)


if __name__ == "__main__":
    sys.exit(main())
