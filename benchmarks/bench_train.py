"""Training throughput of each stage on Ray Train: one JSON line per stage.

    python benchmarks/bench_train.py [--base-model PATH] [--num-workers 1] [--steps 6] [--use-gpu]
    python benchmarks/bench_train.py --threads 2 --autocast-bf16 --top-layers 10   # the cpu_quality settings
    python benchmarks/bench_train.py --stages supervised,supervised_cached --supervised-batch-size 512 \
        --chunk-size 64 --use-gpu --num-workers 8      # the paper_supervised batch, with and without GradCache

Runs MNTP (packed blocks of --block-size tokens) and SimCSE (sentences up to --max-length tokens,
two dropout views) for --steps each on the default model, through the same `run_stage` as
jobs/adapt.py, and reads the step log. Reports the median step time and tokens/s per worker
(real tokens forwarded and back-propagated, both SimCSE views counted) over the steps after the
first (which includes data start-up). Corpus: ../shared/data (wikitext2, wiki1m_prefix).
`supervised` and `supervised_cached` run the supervised stage on ../shared/data/snli_pairs (query
with its instruction, positive, hard negative where there is one; all their tokens counted) with
the whole batch at once and with cached gradients in chunks of --chunk-size texts, and add the
worker's peak memory (CUDA: torch's peak allocation; CPU: the process's peak resident set).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARED = Path(os.environ.get("L2V_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-model", default="default")
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--cpus-per-worker", type=float, default=1)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--stages", default="mntp,simcse")
    p.add_argument("--mntp-batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--simcse-batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--supervised-batch-size", type=int, default=32)
    p.add_argument("--chunk-size", type=int, default=16, help="supervised_cached: texts per GradCache chunk")
    p.add_argument("--pairs", default=str(SHARED / "snli_pairs" / "snli_pairs.parquet"))
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    p.add_argument("--autocast-bf16", action="store_true", help="forward passes under bf16 autocast (AMX CPUs, GPUs)")
    p.add_argument("--top-layers", type=int, default=None, help="SimCSE LoRA on the last N layers only")
    p.add_argument("--threads", type=int, default=None, help="torch threads per CPU worker (default: its CPUs)")
    p.add_argument("--corpus", default=str(SHARED / "wikitext2" / "wiki.test.raw"))
    p.add_argument("--sentences", default=str(SHARED / "wiki1m_prefix" / "wiki1m_for_simcse.first11914.txt"))
    return p.parse_args()


def device_name(use_gpu: bool) -> str:
    import torch

    if use_gpu and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    args = parse_args()
    import ray

    from pipelines.train.chain import model_reference
    from pipelines.train.config import ClusterSettings, MNTPSettings, SimCSESettings, SupervisedSettings
    from pipelines.train.data import mntp_blocks, simcse_sentences
    from pipelines.train.mntp_loop import mntp_loop
    from pipelines.train.pairs import supervised_pairs
    from pipelines.train.simcse_loop import simcse_loop
    from pipelines.train.supervised_loop import supervised_loop
    from pipelines.train.trainer import run_stage

    for needed in (args.corpus, args.sentences, args.pairs):
        if not Path(needed).exists():
            raise SystemExit(f"{needed} not found: set L2V_SHARED_DATA or pass --corpus/--sentences")
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    model = model_reference(args.base_model)
    cluster = ClusterSettings(num_workers=args.num_workers, use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker,
                              max_failures=0, num_to_keep=1)
    common = dict(steps=args.steps, checkpoint_every=args.steps, dtype=args.dtype, autocast_bf16=args.autocast_bf16)
    stages = {
        "mntp": (mntp_loop, MNTPSettings(batch_size=args.mntp_batch_size, block_size=args.block_size, **common),
                 lambda s: mntp_blocks(args.corpus, model_path=model, block_size=s.block_size)),
        "simcse": (simcse_loop, SimCSESettings(batch_size=args.simcse_batch_size, max_length=args.max_length,
                                               lora={"top_layers": args.top_layers}, **common),
                   lambda s: simcse_sentences(args.sentences, model_path=model, max_length=s.max_length, split=False,
                                              min_chars=s.min_chars)),
    }
    for name, chunk in (("supervised", None), ("supervised_cached", args.chunk_size)):
        settings = SupervisedSettings(batch_size=args.supervised_batch_size, max_length=args.max_length, warmup_steps=0,
                                      chunk_size=chunk, lora={"top_layers": args.top_layers}, **common)
        stages[name] = (supervised_loop, settings,
                        lambda s: supervised_pairs(args.pairs, model_path=model, stage=s)[0])
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for name in args.stages.split(","):
            loop, stage, dataset = stages[name]
            log = Path(tmp) / f"{name}.jsonl"
            start = time.perf_counter()
            run_stage(loop, {"stage": stage.model_dump(), "model_path": model, "log_path": str(log),
                             "cpu_threads": args.threads or max(1, int(args.cpus_per_worker))},
                      cluster, name=f"bench-{name}-{int(time.time())}", storage_path=str(Path(tmp) / "storage"),
                      datasets={"train": dataset(stage)})
            records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            steady = records[1:] or records
            print(json.dumps({
                "bench": "train", "stage": name, "model": str(args.base_model), "device": device_name(args.use_gpu),
                "num_workers": args.num_workers, "batch_size": stage.batch_size, "autocast_bf16": args.autocast_bf16,
                "top_layers": args.top_layers if name != "mntp" else None, "threads": args.threads,
                "chunk_size": getattr(stage, "chunk_size", None),
                "peak_memory_mb": max((r.get("peak_memory_mb", 0) for r in records), default=None) or None,
                "tokens_per_row": args.block_size if name == "mntp" else f"<= {args.max_length}",
                "steps": len(records), "median_step_s": round(statistics.median(r["step_time_s"] for r in steady), 3),
                "tokens_per_s_per_worker": round(statistics.median(r["tokens_per_s_per_worker"] for r in steady), 1),
                "first_step_s": records[0]["step_time_s"], "fit_wall_s": round(time.perf_counter() - start, 1),
            }), flush=True)


if __name__ == "__main__":
    main()
