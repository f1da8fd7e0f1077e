"""Does the machine's arithmetic move an evaluation? STS-B dev of encoders in float32 and bf16,
and of the first one also with 1 and 2 threads and one text per call, printed as JSON.

    python benchmarks/bench_eval_arithmetic.py                        # causal and bidirectional default model
    python benchmarks/bench_eval_arithmetic.py out/adapt-cpu/encoder  # and any encoder folders

Issue 17 asked whether machines disagree because evaluation itself does (bf16 kernels with and
without AMX, thread count, padded batches). Each encoder embeds the first `--limit` STS-B dev
pairs (with STS-B's instruction, as jobs/evaluate.py) and gets Spearman x100 of the cosine; the
first, bidirectional untrained model is also run with every path it could take. The first pairs,
not a spread sample, so the figures compare with the earlier short runs scored the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_quality import SHARED, machine  # noqa: E402

from l2v_core import Encoder  # noqa: E402
from pipelines.evaluation import STS_INSTRUCTION, load_stsb, spearman  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("encoders", nargs="*", help="encoder folders to score besides the default model")
    p.add_argument("--stsb", default=str(SHARED / "stsb"), help="folder with sts-dev.csv")
    p.add_argument("--limit", type=int, default=400, help="the first N dev pairs")
    return p.parse_args(argv)


def score(embed, first, second, gold) -> float:
    """Spearman x100 of the cosine of each pair (the vectors come normalized)."""
    return round(100 * spearman((embed(first) * embed(second)).sum(1), gold), 2)


def main(argv=None) -> dict:
    args = parse_args(argv)
    pairs = load_stsb(args.stsb, "dev")
    first, second = list(pairs.first[: args.limit]), list(pairs.second[: args.limit])
    gold = np.asarray(pairs.scores[: args.limit])
    models = [("causal", None, {"bidirectional": False}), ("bidirectional", None, {"bidirectional": True})]
    models += [(folder, folder, {}) for folder in args.encoders]
    report = {"machine": machine(), "pairs": len(gold), "by_dtype": {}}
    for name, path, options in models:
        report["by_dtype"][name] = {}
        for dtype in ("float32", "bfloat16"):
            encoder = Encoder.from_pretrained(path, dtype=dtype, **options)
            report["by_dtype"][name][dtype] = score(lambda t: encoder.encode(t, STS_INSTRUCTION), first, second, gold)
            print(name, dtype, report["by_dtype"][name][dtype], file=sys.stderr, flush=True)

    encoder = Encoder.from_pretrained(None, dtype="float32", bidirectional=True)
    one_by_one = lambda texts: np.concatenate([encoder.encode([t], STS_INSTRUCTION) for t in texts])  # noqa: E731
    paths = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        paths[f"batched_{threads}_threads"] = score(lambda t: encoder.encode(t, STS_INSTRUCTION), first, second, gold)
    paths["one_text_per_call_2_threads"] = score(one_by_one, first, second, gold)
    sample = first[:50]
    paths["max_abs_diff_one_per_call_vs_batched"] = float(
        np.abs(one_by_one(sample) - encoder.encode(sample, STS_INSTRUCTION)).max())
    report["bidirectional_float32_paths"] = paths
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
