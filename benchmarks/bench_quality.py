"""Quality as a distribution over seeds: adapt a profile with N seeds, score each encoder, print JSON.

    python benchmarks/bench_quality.py --config jobs/configs/cpu_quality.yaml --seeds 1,2,3
    python benchmarks/bench_quality.py --config jobs/configs/cpu_quality.yaml --seeds 1,2,3 \\
        --mntp-steps 100 --stages mntp --split dev --limit 400 --tasks stsb    # a short look, dev only
    python benchmarks/bench_quality.py --config jobs/configs/cpu_supervised.yaml --seeds 1,2,3  # + SNLI pairs
    python benchmarks/bench_quality.py --quick     # the tiny random model on a tiny corpus: the plumbing
    python benchmarks/bench_quality.py --merge s1.json s2.json s3.json   # seeds run apart, one distribution

For every seed, the whole chain of `jobs/adapt.py` (`run_chain`, Ray Train) runs with that seed in
both stages, into WORK/seed-<N>; then the final encoder is scored like `jobs/evaluate.py` does:
STS-B Spearman x100 (on --split: test, or dev while choosing settings) and SciFact test nDCG@10 x100.
`--stage-scores` also scores the encoder after each earlier stage. The last line printed is one
JSON object: the machine (CPU model, AMX / AVX512-BF16, threads, torch), the settings, each seed's
scores and final losses, and per score its mean, min, max and spread (max - min) over the seeds.
A single run is one draw: publish the distribution, never the best seed.

Seeds may run apart (one per machine, job or day: each is an hour of a 2-core CPU): save each
run's output and `--merge` the files; the reports must agree on the profile, its settings and the
machine, or the merge refuses (a distribution mixes draws of one recipe, not different recipes).
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

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("L2V_SHARED_DATA", REPO.parent / "shared" / "data"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "jobs" / "configs" / "cpu_quality.yaml"), help="adaptation profile")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds, one adaptation each")
    p.add_argument("--stages", help="override the profile's stages, e.g. mntp")
    p.add_argument("--mntp-steps", type=int)
    p.add_argument("--simcse-steps", type=int)
    p.add_argument("--autocast-bf16", choices=["true", "false"], help="override both stages' autocast_bf16")
    p.add_argument("--base-model", help="model name or folder (default: the profile's)")
    p.add_argument("--corpus", default=str(SHARED / "wikitext2" / "wiki.test.raw"))
    p.add_argument("--simcse-corpus", default=str(SHARED / "wiki1m_prefix" / "wiki1m_for_simcse.first11914.txt"))
    p.add_argument("--pairs", default=str(SHARED / "snli_pairs" / "snli_pairs.parquet"),
                   help="query/positive pairs of the supervised stage")
    p.add_argument("--stsb", default=str(SHARED / "stsb"), help="folder with sts-<split>.csv")
    p.add_argument("--scifact", default=str(SHARED / "scifact"), help="BEIR SciFact folder")
    p.add_argument("--split", default="test", choices=["test", "dev"], help="STS-B split (dev to choose settings)")
    p.add_argument("--tasks", default="stsb,scifact", help="comma-separated: stsb, scifact")
    p.add_argument("--limit", type=int, help="only the first N STS pairs / SciFact queries")
    p.add_argument("--stage-scores", action="store_true", help="also score the encoder after each earlier stage")
    p.add_argument("--eval-dtype", help="float32 (CPU default) or bfloat16")
    p.add_argument("--work", help="folder for the runs (default: a temporary folder, removed)")
    p.add_argument("--quick", action="store_true", help="tiny random model, tiny corpus and data: checks the plumbing")
    p.add_argument("--merge", nargs="+", metavar="REPORT",
                   help="files holding earlier outputs of this script: print their seeds' combined distribution")
    return p.parse_args(argv)


def machine() -> dict:
    """What the figures were measured on: they depend on it (bf16 kernels differ with and without AMX)."""
    import torch

    flags, model = set(), platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "amx": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "torch": torch.__version__}


def seeded_config(args, seed: int):
    """The profile with `seed` in both stages and the command line's overrides, validated again."""
    from pipelines.train.config import AdaptConfig, load_config

    raw = load_config(args.config).model_dump()
    if args.stages:
        raw["stages"] = args.stages.split(",")
    if args.base_model:
        raw["base_model"] = args.base_model
    for stage in ("mntp", "simcse", "supervised"):
        raw[stage]["seed"] = seed
        if args.autocast_bf16:
            raw[stage]["autocast_bf16"] = args.autocast_bf16 == "true"
    if args.mntp_steps:
        raw["mntp"]["steps"] = args.mntp_steps
    if args.simcse_steps:
        raw["simcse"]["steps"] = args.simcse_steps
    raw["cluster"]["name"] = f"quality-seed-{seed}"
    return AdaptConfig.model_validate(raw)


def score(encoder_dir: str | Path, *, stsb: str, scifact: str, split: str = "test", tasks=("stsb", "scifact"),
          limit: int | None = None, dtype: str | None = None) -> dict:
    """{"stsb_<split>": Spearman x100, "scifact_test": nDCG@10 x100} of one encoder folder, as
    jobs/evaluate.py measures them (same tasks, instructions and metrics)."""
    from l2v_core import Encoder
    from pipelines.evaluation import evaluate_scifact, evaluate_stsb, load_scifact, load_stsb

    encoder = Encoder.from_pretrained(str(encoder_dir), dtype=dtype)

    def embed(texts, instruction):
        return encoder.encode(list(texts), instruction)

    scores = {}
    if "stsb" in tasks:
        pairs = load_stsb(stsb, split)
        if limit:
            pairs.first, pairs.second, pairs.scores = (x[:limit] for x in (pairs.first, pairs.second, pairs.scores))
        scores[f"stsb_{split}"] = evaluate_stsb(embed, pairs)["spearman"]
    if "scifact" in tasks:
        data = load_scifact(scifact, "test")
        if limit:
            data.query_ids, data.queries = data.query_ids[:limit], data.queries[:limit]
        scores["scifact_test"] = evaluate_scifact(embed, data)["ndcg@10"]
    return scores


def distribution(runs: list[dict]) -> dict:
    """Per score key found in the runs: mean, min, max and spread over the seeds."""
    keys = [k for k in runs[0] if k.startswith(("stsb_", "scifact_", "mntp/"))] if runs else []
    out = {}
    for key in keys:
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out[key] = {"mean": round(statistics.fmean(values), 2), "min": min(values), "max": max(values),
                        "spread": round(max(values) - min(values), 2), "n": len(values)}
    return out


# what must match for reports to be merged into one distribution
SAME_RECIPE = ("config", "stages", "steps", "autocast_bf16", "split", "limit", "machine")


def merge(paths: list[str]) -> dict:
    """The reports saved in `paths` (each file: this script's output; its last line is the report)
    as one report with every seed's run and the combined distribution."""
    reports = []
    for path in paths:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        try:
            report = json.loads(lines[-1]) if lines else {}
        except json.JSONDecodeError:
            report = {}
        if not isinstance(report, dict) or report.get("bench") != "quality":
            raise SystemExit(f"error: {path} does not end with a bench_quality report (its last line is the JSON)")
        reports.append(report)
    first = reports[0]
    for path, report in zip(paths[1:], reports[1:]):
        differs = [key for key in SAME_RECIPE if report.get(key) != first.get(key)]
        if differs:
            raise SystemExit(f"error: {path} differs from {paths[0]} in {', '.join(differs)}: "
                             f"only runs of one recipe on one kind of machine make one distribution")
    runs = [run for report in reports for run in report["runs"]]
    seeds = [run["seed"] for run in runs]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"error: a seed appears twice among {paths}: {sorted(seeds)}")
    merged = {**first, "seeds": seeds, "runs": runs, "distribution": distribution(runs), "merged_from": list(paths)}
    print(json.dumps(merged), flush=True)
    return merged


def quick_setup(args, root: Path) -> None:
    """--quick: the tiny random model, a tiny corpus, tiny STS-B / SciFact files, a few steps."""
    from l2v_core.testing import tiny_model_and_tokenizer

    model, tokenizer = tiny_model_and_tokenizer("llama", with_lm_head=True)
    model.save_pretrained(root / "model", safe_serialization=True)
    tokenizer.save_pretrained(root / "model")
    lines = ["A cat sits on the mat while the dog sleeps in the sun.", "Ray Data streams blocks of rows to workers.",
             "Vectors are normalized so inner product equals cosine.", "The quick brown fox jumps over the lazy dog."]
    (root / "corpus.txt").write_text("\n".join(lines * 8) + "\n")
    (root / "stsb").mkdir()
    rows = [f"g\tf\t2012\t{i}\t{i % 5}.0\t{lines[i % 4]}\t{lines[(i + i // 4) % 4]}" for i in range(12)]
    (root / "stsb" / f"sts-{args.split}.csv").write_text("\n".join(rows) + "\n")
    (root / "config.yaml").write_text(
        "profile: quick-bench\n"
        "mntp: {steps: 3, batch_size: 4, block_size: 32, lr: 0.01, checkpoint_every: 3, lora: {r: 4, alpha: 8}}\n"
        "simcse: {steps: 3, batch_size: 4, max_length: 32, lr: 0.005, checkpoint_every: 3, lora: {r: 4, alpha: 8}}\n"
        "cluster: {num_workers: 1, cpus_per_worker: 0.5, max_failures: 0, num_to_keep: 1}\n"
    )
    args.config, args.base_model = str(root / "config.yaml"), str(root / "model")
    args.corpus = args.simcse_corpus = str(root / "corpus.txt")
    args.stsb, args.tasks = str(root / "stsb"), "stsb"
    args.seeds = args.seeds if args.seeds != "1,2,3" else "1,2"


def main(argv=None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    args = parse_args(argv)
    if args.merge:
        return merge(args.merge)
    with tempfile.TemporaryDirectory(prefix="l2v-quality-") as scratch:
        work = Path(args.work).resolve() if args.work else Path(scratch)
        if args.quick:
            work.mkdir(parents=True, exist_ok=True)
            (work / "quick").mkdir(exist_ok=True)
            quick_setup(args, work / "quick")
        return run(args, work)


def run(args, work: Path) -> dict:
    import ray

    from pipelines.train.chain import run_chain

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not ray.is_initialized():
        ray.init(address="local", log_to_driver=False, include_dashboard=False)
    runs, config = [], None
    for seed in seeds:
        config = seeded_config(args, seed)
        start = time.perf_counter()
        pairs = args.pairs if "supervised" in config.stages else None
        summary = run_chain(config, corpus=args.corpus, output=work / f"seed-{seed}", simcse_corpus=args.simcse_corpus,
                            pairs=pairs)
        record = {"seed": seed, "train_s": round(time.perf_counter() - start, 1),
                  **{f"{s['name']}_final_loss": s.get("final_loss") for s in summary["stages"][1:]}}
        kwargs = dict(stsb=args.stsb, scifact=args.scifact, split=args.split, tasks=tasks, limit=args.limit,
                      dtype=args.eval_dtype)
        record.update(score(summary["encoder"], **kwargs))
        if args.stage_scores:
            for stage in config.stages[:-1]:
                scores = score(work / f"seed-{seed}" / "stages" / stage / "encoder", **kwargs)
                record.update({f"{stage}/{k}": v for k, v in scores.items()})
        runs.append(record)
        print(json.dumps({"seed_done": record}), flush=True)  # a long run shows progress
    report = {"bench": "quality", "config": args.config, "machine": machine(), "seeds": seeds,
              "stages": config.stages, "steps": {s: getattr(config, s).steps for s in config.stages},
              "autocast_bf16": {s: getattr(config, s).autocast_bf16 for s in config.stages},
              "split": args.split, "limit": args.limit, "runs": runs, "distribution": distribution(runs)}
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()
