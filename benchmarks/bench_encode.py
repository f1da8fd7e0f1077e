"""Encoder.encode throughput: token-budget batching vs the reference library's batching.

    python benchmarks/bench_encode.py [--sample 400] [--batch-tokens 16384] [--model PATH]

Prints one JSON line. Corpus: SciFact (../shared/data/scifact/corpus.jsonl, title + text), a
random sample of `--sample` documents (0 = all 5,183). "reference" batching is what llm2vec does:
sort by characters, fixed batches of 32 texts padded to the longest. Tokens/s counts real
(unpadded) tokens, so padding shows up as lost throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch

from l2v_core import Encoder, padding_share, plan_micro_batches

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact" / "corpus.jsonl"


def load_scifact(path: Path, sample: int, seed: int = 0) -> list[str]:
    if not path.is_file():
        sys.exit(f"SciFact corpus not found at {path}; pass --corpus (see REFERENCE.md section 5)")
    docs = [json.loads(line) for line in path.open()]
    texts = [f"{d.get('title', '')}. {d['text']}".strip(". ") for d in docs]
    if sample and sample < len(texts):
        texts = random.Random(seed).sample(texts, sample)
    return texts


def reference_plan(texts: list[str], batch_size: int = 32) -> list[list[int]]:
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def timed(encoder: Encoder, batch, plan) -> float:
    start = time.perf_counter()
    encoder.encode_tokenized(batch, micro_batches=plan)
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--sample", type=int, default=400)
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--model", default=None, help="model or encoder folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()

    texts = load_scifact(args.corpus, args.sample)
    encoder = Encoder.from_pretrained(args.model, max_length=args.max_length)
    batch = encoder.tokenize(texts)
    real_tokens = sum(batch.n_tokens)
    plans = {
        "token_budget": plan_micro_batches(batch.n_tokens, args.batch_tokens),
        "reference_32_by_chars": reference_plan(texts),
    }
    encoder.encode_tokenized(batch, micro_batches=[plans["token_budget"][-1]])  # warm-up
    result = {
        "bench": "encode",
        "model": encoder.settings.base_model,
        "device": str(encoder.device),
        "dtype": str(encoder.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "texts": len(texts),
        "real_tokens": real_tokens,
        "max_length": encoder.settings.max_length,
        "batch_tokens": args.batch_tokens,
        "truncated": sum(batch.truncated),
    }
    for name, plan in plans.items():
        seconds = timed(encoder, batch, plan)
        result[name] = {
            "seconds": round(seconds, 2),
            "tokens_per_s": round(real_tokens / seconds, 1),
            "padding_share": round(padding_share(batch.n_tokens, plan), 4),
            "micro_batches": len(plan),
        }
    result["speedup"] = round(
        result["token_budget"]["tokens_per_s"] / result["reference_32_by_chars"]["tokens_per_s"], 3
    )
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
