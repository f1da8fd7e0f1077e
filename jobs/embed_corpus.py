"""Embed a parquet corpus into vectors + a FAISS index, published as a new version of --output.

On this machine (starts a local Ray):

    python jobs/embed_corpus.py --input data/corpus/ --output out/index --model out/adapt/encoder

On a cluster (Ray 2.60 turns token auth on for `ray start`; see docs/embed.md):

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/embed_corpus.py --input s3://bucket/corpus/ --output /shared/index --model /shared/encoder

Nightly, reusing unchanged documents' vectors: add --incremental (docs/embed.md).

Exit codes: 0 published (or, with --incremental, nothing changed); 2 bad arguments, settings or
input (missing column, unreadable file, unknown setting, more actors than the cluster holds, an
index that cannot fit --index-memory); 3 another run holds the output's lock; 1 anything else
(see deploy/README.md). Settings can come from a YAML file of EmbedConfig fields
(`--config`); flags given on the command line win.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pipelines.embed import BadFileError, EmbedConfig, LockedError, MissingColumnsError, run_embed  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file of EmbedConfig fields")
    p.add_argument("--input", nargs="+", help="parquet files, folders, globs or URIs")
    p.add_argument("--output", help="output root (versions/, CURRENT)")
    p.add_argument("--model", help="exported encoder folder, model folder or name (default: SmolLM2-135M-Instruct)")
    p.add_argument("--id-column")
    p.add_argument("--text-column")
    p.add_argument("--title-column")
    p.add_argument("--instruction", help="instruction before each document (default: the encoder's 'document' one)")
    p.add_argument("--max-length", type=int, help="override the encoder's max tokens per text")
    p.add_argument("--index", choices=["auto", "flat", "ivf", "ivfpq", "hnsw"])
    p.add_argument("--index-memory", help="index memory budget, e.g. 4GiB")
    p.add_argument("--num-actors", type=int, help="embed actors (default: one per GPU, else 1)")
    p.add_argument("--cpu-threads", type=int, help="torch threads per CPU actor")
    p.add_argument("--actor-cpus", type=float, help="CPUs Ray reserves per embed actor (default 1)")
    p.add_argument("--batch-size", type=int, help="rows per embed batch (sorted by length inside)")
    p.add_argument("--batch-tokens", type=int, help="padded tokens per forward pass")
    p.add_argument("--device")
    p.add_argument("--dtype")
    p.add_argument("--skip-bad-files", action="store_true", default=None, help="skip unreadable files (listed in the manifest's input.bad_files) instead of failing")
    p.add_argument("--no-store-text", dest="store_text", action="store_false", default=None,
                   help="do not keep texts in the vectors parquet (search then shows ids only)")
    p.add_argument("--keep-versions", type=int, help="keep the newest N complete versions plus the published one (default 3)")
    p.add_argument("--recall-queries", type=int, help="sampled vectors for the index's recall@10 (default 200)")
    p.add_argument("--incremental", action="store_true", default=None,
                   help="reuse the published version's vectors for unchanged documents; drop deleted ids")
    p.add_argument("--json", action="store_true", help="print the manifest's counts as JSON at the end")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> EmbedConfig:
    fields = {k: v for k, v in vars(args).items() if k not in ("config", "json") and v is not None}
    if args.config:
        return EmbedConfig.from_yaml(args.config, **fields)
    if "input" not in fields or "output" not in fields:
        raise ValueError("give --input and --output (or --config FILE)")
    return EmbedConfig(**fields)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)  # argparse itself exits with 2 on a bad flag
    try:
        result = run_embed(config_from_args(args))
    except (MissingColumnsError, BadFileError, FileNotFoundError, ValueError, yaml.YAMLError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except LockedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps({"version": result.version, "published": result.published, **result.counts,
                          "index": result.manifest["index"],
                          "throughput": result.manifest["throughput"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
