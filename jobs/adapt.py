"""Adapt a decoder-only LLM into a text encoder: bidirectional -> MNTP -> SimCSE and/or supervised -> export (LLM2Vec).

Every stage is a Ray Train run that checkpoints to --storage-path and resumes when re-run with
the same --name. The encoder lands in OUTPUT/encoder/, the peft adapters in OUTPUT/adapters/.

Local, quick profile (2-core CPU, minutes; defaults to SmolLM2-135M-Instruct; `l2v-adapt` is
the same as `python jobs/adapt.py`):
    l2v-adapt --corpus ../shared/data/wikitext2/wiki.test.raw \\
        --simcse-corpus ../shared/data/wiki1m_prefix/wiki1m_for_simcse.first11914.txt \\
        --output out/adapt --profile quick

On a Ray cluster (GPU workers, shared storage; paper settings):
    ray job submit --working-dir . -- python jobs/adapt.py --corpus s3://bucket/wikitext103/ \\
        --output /mnt/nfs/l2v/mistral --base-model /mnt/nfs/models/Mistral-7B-Instruct-v0.2 \\
        --config jobs/configs/paper_mistral.yaml --num-workers 8 --use-gpu \\
        --storage-path s3://bucket/l2v-runs --name mistral-l2v

Supervised contrastive on your own pairs (parquet or JSONL: query, positive, optional negative),
after MNTP (about an hour on a 2-core CPU with the cpu_supervised profile):
    l2v-adapt --corpus ../shared/data/wikitext2/wiki.test.raw \\
        --pairs ../shared/data/snli_pairs/snli_pairs.parquet \\
        --output out/adapt-sup --config jobs/configs/cpu_supervised.yaml

One stage alone: --stages mntp (then --stages simcse --base-model OUTPUT/encoder).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from pipelines.cli import UsageError, job_parser, one_line, run_job

CONFIGS = Path(__file__).resolve().parent / "configs"


def parse_args(argv=None) -> argparse.Namespace:
    p = job_parser(__doc__)
    p.add_argument("--corpus", help="MNTP text: parquet file/folder with a text column, or text files "
                   "(needed by the mntp and simcse stages)")
    p.add_argument("--simcse-corpus", help="SimCSE sentences, one per line (default: sentences split from --corpus)")
    p.add_argument("--pairs", help="supervised stage: parquet or JSONL file/folder of (query, positive, optional "
                   "negative, optional instruction) rows; column names in the config's supervised section")
    p.add_argument("--output", required=True, help="output folder (encoder/, adapters/, logs/, loss_curves.png)")
    p.add_argument("--base-model", help="model name or folder (default: SmolLM2-135M-Instruct, offline)")
    p.add_argument("--profile", default="quick", help="settings in jobs/configs/<profile>.yaml: quick, paper, ...")
    p.add_argument("--config", help="a YAML config file (overrides --profile)")
    p.add_argument("--stages", help="comma-separated stages to run: mntp,simcse (default), mntp,supervised, "
                   "mntp,simcse,supervised, or one stage on --base-model")
    p.add_argument("--num-workers", type=int, help="Ray Train workers per stage")
    p.add_argument("--cpus-per-worker", type=float, help="CPUs reserved per worker")
    p.add_argument("--use-gpu", action="store_true", default=None, help="one GPU per worker")
    p.add_argument("--strategy", choices=["ddp", "fsdp"], help="ddp (default) or fsdp: shard the model over workers")
    p.add_argument("--storage-path", help="checkpoint storage: local folder, NFS or cloud URI (shared for multi-node)")
    p.add_argument("--name", help="run name; re-running with the same name resumes")
    p.add_argument("--mntp-steps", type=int)
    p.add_argument("--simcse-steps", type=int)
    p.add_argument("--mntp-lr", type=float)
    p.add_argument("--simcse-lr", type=float)
    p.add_argument("--mntp-batch-size", type=int)
    p.add_argument("--simcse-batch-size", type=int)
    p.add_argument("--supervised-steps", type=int)
    p.add_argument("--supervised-lr", type=float)
    p.add_argument("--supervised-batch-size", type=int)
    p.add_argument("--chunk-size", type=int, help="supervised: cached-gradient chunk size (GradCache; 0 = off)")
    p.add_argument("--seed", type=int, help="seed of every stage (LoRA init, masks, dropout, data order)")
    p.add_argument("--text-column", help="text column of a parquet corpus")
    p.add_argument("--tracker", choices=["none", "tensorboard", "mlflow"],
                   help="training curves: tensorboard (OUTPUT/tensorboard, tensorboard --logdir reads them) or mlflow "
                   "(one MLflow run per stage in experiment --name; MLFLOW_TRACKING_URI if set, else OUTPUT/mlruns)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a running cluster, else local)")
    p.add_argument("--eval-stsb", help="folder with STS-B's sts-dev.csv: score the model being trained on its dev "
                   "pairs every --eval-every steps (logged as stsb_dev, drawn in loss_curves.png)")
    p.add_argument("--eval-every", type=int, help="steps between in-training STS-B dev evaluations (every stage)")
    p.add_argument("--eval-report", help="a jobs/evaluate.py --out report to put on the encoder's model card")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace):
    """The YAML config with the command line's overrides applied, validated once more."""
    from pipelines.train.config import AdaptConfig, load_config

    path = Path(args.config) if args.config else CONFIGS / f"{args.profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
        raise UsageError(f"no config {path}; profiles available: {', '.join(known)}")
    try:
        raw = load_config(path).model_dump()
    except ValueError as err:  # a YAML or validation error, naming the file
        raise UsageError(one_line(err)) from err
    overrides = {
        ("base_model",): args.base_model, ("text_column",): args.text_column, ("tracker",): args.tracker,
        ("eval_stsb",): args.eval_stsb,
        ("stages",): args.stages.split(",") if args.stages else None,
        ("cluster", "num_workers"): args.num_workers, ("cluster", "cpus_per_worker"): args.cpus_per_worker,
        ("cluster", "use_gpu"): args.use_gpu, ("cluster", "strategy"): args.strategy,
        ("cluster", "storage_path"): args.storage_path,
        ("cluster", "name"): args.name,
        ("mntp", "steps"): args.mntp_steps, ("simcse", "steps"): args.simcse_steps,
        ("mntp", "lr"): args.mntp_lr, ("simcse", "lr"): args.simcse_lr,
        ("mntp", "batch_size"): args.mntp_batch_size, ("simcse", "batch_size"): args.simcse_batch_size,
        ("supervised", "steps"): args.supervised_steps, ("supervised", "lr"): args.supervised_lr,
        ("supervised", "batch_size"): args.supervised_batch_size,
        **({(stage, "seed"): args.seed for stage in ("mntp", "simcse", "supervised")} if args.seed is not None else {}),
        **({(stage, "eval_every"): args.eval_every for stage in ("mntp", "simcse", "supervised")}
           if args.eval_every is not None else {}),
    }
    for keys, value in overrides.items():
        if value is not None:
            target = raw
            for key in keys[:-1]:
                target = target[key]
            target[keys[-1]] = value
    if args.chunk_size is not None:
        raw["supervised"]["chunk_size"] = args.chunk_size or None  # 0 turns cached gradients off
    return AdaptConfig.model_validate(raw)


def check_paths(args: argparse.Namespace, cfg) -> None:
    """The stages' inputs are given, and local ones exist, before Ray starts (URIs and globs are
    checked by the reader)."""
    if {"mntp", "simcse"} & set(cfg.stages) and not args.corpus and not (
            cfg.stages == ["simcse"] and args.simcse_corpus):
        raise UsageError(f"stages {','.join(cfg.stages)} need --corpus (MNTP text / SimCSE sentences)")
    if "supervised" in cfg.stages and not args.pairs:
        raise UsageError("the supervised stage needs --pairs PATH (parquet or JSONL with query and positive columns)")
    from pipelines.train.trackers import missing_package

    if cfg.tracker != "none" and (missing := missing_package(cfg.tracker)):
        raise UsageError(missing)
    if cfg.eval_stsb and not (Path(cfg.eval_stsb) / "sts-dev.csv").is_file():
        raise UsageError(f"eval_stsb {cfg.eval_stsb}: no sts-dev.csv there (the in-training evaluation reads STS-B's "
                         f"dev split)")
    for flag, value in (("--corpus", args.corpus), ("--simcse-corpus", args.simcse_corpus), ("--pairs", args.pairs)):
        if value and "://" not in value and not any(ch in value for ch in "*?[") and not Path(value).exists():
            raise UsageError(f"{flag} {value} does not exist")


def run(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    cfg = build_config(args)
    check_paths(args, cfg)
    import ray

    from pipelines.train.chain import run_chain

    if not ray.is_initialized():
        ray.init(address=args.address)
    from l2v_core.model_card import load_eval_report, write_model_card

    report = load_eval_report(args.eval_report)  # checked before hours of training, not after
    summary = run_chain(cfg, corpus=args.corpus, output=args.output, simcse_corpus=args.simcse_corpus,
                        pairs=args.pairs)
    if report:
        write_model_card(summary["encoder"], report)
    print(f"\n{'stage':<14}{'steps':>7}{'batch':>7}{'wall s':>9}{'final loss':>12}")
    for stage in summary["stages"][1:]:
        print(f"{stage['name']:<14}{stage['steps']:>7}{stage['batch_size']:>7}{stage['wall_time_s']:>9}"
              f"{stage['final_loss']:>12.4f}")
    print(f"encoder: {summary['encoder']}\nadapters: {summary['adapters']}\nloss curves: {summary['loss_curves']}")
    print(json.dumps({"adapt": {"encoder": summary["encoder"], "stages": [s["name"] for s in summary["stages"]]}}))
    return summary


def main(argv=None) -> int:
    return run_job(run, argv)


if __name__ == "__main__":
    sys.exit(main())
