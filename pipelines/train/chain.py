"""The adaptation chain: bidirectional -> MNTP -> SimCSE and/or supervised -> export (what jobs/adapt.py runs).

Each stage is a row of STAGES: its loop, how its training set is built and what the stage
history records about it.

Output layout:
    OUTPUT/encoder/            the final encoder folder (Encoder.from_pretrained loads it)
    OUTPUT/adapters/<stage>/   each stage's LoRA adapter, peft format (apply in stage order)
    OUTPUT/stages/<stage>/     the encoder after each earlier stage (for evaluation)
    OUTPUT/logs/<stage>.jsonl  step logs; OUTPUT/loss_curves.png; OUTPUT/adapt_summary.json
    OUTPUT/ray_results/        Ray Train checkpoints (default storage_path)
    OUTPUT/tensorboard/<stage> --tracker tensorboard; OUTPUT/mlruns/: --tracker mlflow (MLflow file store)
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray.data

from l2v_core.default_model import is_default_model
from l2v_core.loading import resolve_model_path

from .config import AdaptConfig
from .data import mntp_blocks, simcse_sentences
from .export import adapter_base, export_encoder, keep_adapter_and_log, write_adapters_readme
from .loop_config import LoopConfig
from .mntp_loop import mntp_loop
from .pairs import supervised_pairs
from .plot import plot_losses
from .simcse_loop import simcse_loop
from .supervised_loop import supervised_loop
from .trackers import TrackerSpec, flat_params
from .trainer import check_storage, run_stage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inputs:
    """The data files of a run: MNTP's corpus, SimCSE's sentences (default: split from the corpus),
    the supervised stage's pairs."""

    corpus: str | None
    simcse_corpus: str | None = None
    pairs: str | None = None


@dataclass(frozen=True)
class StageSpec:
    """How the chain runs one stage: its loop, its training set, what its history records."""

    loop: Callable[[dict], None]
    dataset: Callable[[AdaptConfig, Inputs, str], tuple[ray.data.Dataset, dict]]  # (cfg, inputs, model) -> ds, notes
    details: Callable[[object], dict]  # the stage's own settings worth recording


def _mntp_data(cfg: AdaptConfig, inputs: Inputs, model_ref: str):
    if not inputs.corpus:
        raise ValueError("the mntp stage needs a corpus (--corpus)")
    stage = cfg.mntp
    ds = mntp_blocks(inputs.corpus, model_path=model_ref, block_size=stage.block_size, text_column=cfg.text_column)
    return ds, {"corpus": inputs.corpus}


def _simcse_data(cfg: AdaptConfig, inputs: Inputs, model_ref: str):
    stage, source = cfg.simcse, inputs.simcse_corpus or inputs.corpus
    if not source:
        raise ValueError("the simcse stage needs sentences (--simcse-corpus) or a corpus to split (--corpus)")
    ds = simcse_sentences(source, model_path=model_ref, max_length=stage.max_length,
                          split=stage.split_sentences or inputs.simcse_corpus is None, min_chars=stage.min_chars,
                          text_column=cfg.text_column, instruction=stage.instruction)
    return ds, {"corpus": source}


def _supervised_data(cfg: AdaptConfig, inputs: Inputs, model_ref: str):
    if not inputs.pairs:
        raise ValueError("the supervised stage needs a pairs file (--pairs: parquet or JSONL with query, positive "
                         "and optionally negative columns)")
    ds, counts = supervised_pairs(inputs.pairs, model_path=model_ref, stage=cfg.supervised)
    return ds, {"corpus": inputs.pairs, "pairs_rows": counts.rows, "pairs_kept": counts.kept,
                "pairs_skipped": counts.skipped, "pairs_with_negative": counts.with_negative}


STAGES: dict[str, StageSpec] = {
    "mntp": StageSpec(mntp_loop, _mntp_data,
                      lambda s: {"block_size": s.block_size, "mask_probability": s.mask_probability}),
    "simcse": StageSpec(simcse_loop, _simcse_data,
                        lambda s: {"max_length": s.max_length, "scale": s.scale,
                                   "attention_dropout": s.attention_dropout, "instruction": s.instruction}),
    "supervised": StageSpec(supervised_loop, _supervised_data,
                            lambda s: {"max_length": s.max_length, "scale": s.scale, "instruction": s.instruction,
                                       "chunk_size": s.chunk_size, "warmup_steps": s.warmup_steps}),
}


def encoder_instructions(cfg: AdaptConfig) -> dict[str, str]:
    """The instructions the training used, recorded in the encoder: SimCSE's for symmetric
    similarity ('sts'), the supervised stage's for queries ('query')."""
    found = {}
    if "simcse" in cfg.stages and cfg.simcse.instruction:
        found["sts"] = cfg.simcse.instruction
    if "supervised" in cfg.stages and cfg.supervised.instruction:
        found["query"] = cfg.supervised.instruction
    return found


def encoder_pooling(cfg: AdaptConfig) -> str:
    """The pooling of the last contrastive stage (the one the embeddings were trained with)."""
    contrastive = [name for name in cfg.stages if name in ("simcse", "supervised")]
    return getattr(cfg, contrastive[-1]).pooling if contrastive else cfg.simcse.pooling


def model_reference(base_model: str | None) -> str:
    """What workers load: "default" (each node resolves its own cache) or an absolute folder/id."""
    return "default" if is_default_model(base_model) else resolve_model_path(base_model)


def dev_scores(log: Path) -> dict:
    """{"stsb_dev": {step: score}} of a stage's in-training evaluations, or {} when it had none."""
    records = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    scores = {r["step"]: r["stsb_dev"] for r in records if "stsb_dev" in r}
    return {"stsb_dev": scores} if scores else {}


def stsb_dev_pairs(folder: str, limit: int) -> tuple:
    """`limit` STS-B dev pairs spread evenly over the file, as (first sentences, second sentences,
    gold scores). Spread, not the first `limit`: the file is sorted by genre and its first 625
    pairs are all image and video captions, so a prefix would score one genre only (the test
    split mixes captions, forums and news). Read here on the driver and handed to the workers in
    their loop config (a few hundred short sentences), so the folder need not be reachable from
    every node."""
    from pipelines.evaluation import load_stsb

    pairs = load_stsb(folder, "dev")
    total = len(pairs.scores)
    rows = range(total) if limit >= total else [i * total // limit for i in range(limit)]
    return tuple(tuple(column[i] for i in rows) for column in (pairs.first, pairs.second, pairs.scores))


def mlflow_uri(output: Path) -> str:
    """Where --tracker mlflow logs: the user's MLFLOW_TRACKING_URI when set (a server, a database),
    else a file store in OUTPUT/mlruns. Resolved here on the driver: workers may not share its
    environment."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (output / "mlruns").as_uri()


def tracker_spec(cfg: AdaptConfig, output: Path, run_name: str, stage_name: str, model_ref: str) -> TrackerSpec | None:
    """Where a stage's curves go: TensorBoard event files in OUTPUT/tensorboard/<stage>, or an MLflow
    run named after the stage in the experiment named after the run (its --name), with the
    stage's settings and the run's setup as params."""
    if cfg.tracker == "tensorboard":
        return TrackerSpec("tensorboard", str(output / "tensorboard" / stage_name), stage_name)
    if cfg.tracker == "mlflow":
        setup = {"profile": cfg.profile, "stages": ",".join(cfg.stages), "model": model_ref,
                 "num_workers": cfg.cluster.num_workers, "strategy": cfg.cluster.strategy,
                 "use_gpu": cfg.cluster.use_gpu}
        params = flat_params(setup) | flat_params(getattr(cfg, stage_name).model_dump())
        return TrackerSpec("mlflow", mlflow_uri(output), stage_name, experiment=run_name, params=params)
    return None


def run_chain(cfg: AdaptConfig, *, corpus: str | None, output: str | Path, simcse_corpus: str | None = None,
              pairs: str | None = None) -> dict:
    """Run the configured stages in order and export. Returns the summary (also written as JSON)."""
    output = Path(output).resolve()
    inputs = Inputs(corpus, simcse_corpus, pairs)
    explicit_storage = cfg.cluster.storage_path is not None
    storage = check_storage(cfg.cluster.storage_path or str(output / "ray_results"), explicit=explicit_storage)
    run_name = cfg.cluster.name or output.name
    model_ref = model_reference(cfg.base_model)
    instructions, pooling = encoder_instructions(cfg), encoder_pooling(cfg)
    history: list[dict] = [{"name": "bidirectional", "note": "attention switched to bidirectional, no training"}]
    checkpoints, logs, adapter_bases = [], {}, []
    dev_pairs = stsb_dev_pairs(cfg.eval_stsb, cfg.eval_pairs) if cfg.eval_stsb else ()

    for index, stage_name in enumerate(cfg.stages):
        stage, spec = getattr(cfg, stage_name), STAGES[stage_name]
        dataset, data_notes = spec.dataset(cfg, inputs, model_ref)
        loop_config = LoopConfig(
            stage=stage.model_dump(), model_path=model_ref, merge=tuple(checkpoints),
            log_path=str(output / "logs" / f"{stage_name}.live.jsonl"), strategy=cfg.cluster.strategy,
            cpu_threads=cfg.cluster.threads_per_worker or max(1, int(cfg.cluster.cpus_per_worker)),
            tracker=tracker_spec(cfg, output, run_name, stage_name, model_ref),
            eval_pairs=dev_pairs if stage.eval_every else (),
        ).to_dict()
        start = time.perf_counter()
        result = run_stage(spec.loop, loop_config, cfg.cluster, name=f"{run_name}-{stage_name}", storage_path=storage,
                           datasets={"train": dataset})
        wall = time.perf_counter() - start
        checkpoints.append(result.checkpoint)
        previous_body = output / "stages" / cfg.stages[index - 1] / "encoder" if index else None
        base = adapter_base(model_ref, output / "adapters", previous_body)
        adapter_bases.append((stage_name, base))
        logs[stage_name] = keep_adapter_and_log(result.checkpoint, output / "adapters", output / "logs", stage_name,
                                                base=base)
        history.append({
            "name": stage_name, "steps": stage.steps, "batch_size": stage.batch_size, "lr": stage.lr,
            "num_workers": cfg.cluster.num_workers, "wall_time_s": round(wall, 1),
            "final_loss": result.metrics.get("loss"), **dev_scores(logs[stage_name]), **data_notes,
            "lora": stage.lora.model_dump(), "adapter_base": base, "seed": stage.seed, **spec.details(stage),
        })
        logger.info("stage %s done in %.1f s (loss %s)", stage_name, wall, result.metrics.get("loss"))
        if index < len(cfg.stages) - 1:
            export_encoder(model_ref, checkpoints, output / "stages" / stage_name / "encoder", pooling=pooling,
                           max_length=cfg.export_max_length, stages=list(history), instructions=instructions)

    start = time.perf_counter()
    encoder_dir = export_encoder(model_ref, checkpoints, output / "encoder", pooling=pooling,
                                 max_length=cfg.export_max_length, stages=history, instructions=instructions)
    write_adapters_readme(output / "adapters", adapter_bases)
    png = plot_losses(logs, output / "loss_curves.png") if logs else None
    summary = {
        "encoder": str(encoder_dir), "adapters": str(output / "adapters"), "loss_curves": str(png) if png else None,
        "storage_path": storage, "run_name": run_name, "stages": history,
        "export_wall_time_s": round(time.perf_counter() - start, 1),
        **({"tensorboard": str(output / "tensorboard")} if cfg.tracker == "tensorboard" else {}),
        **({"mlflow": {"tracking_uri": mlflow_uri(output), "experiment": run_name}} if cfg.tracker == "mlflow" else {}),
    }
    (output / "adapt_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
