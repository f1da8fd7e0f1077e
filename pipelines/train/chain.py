"""The adaptation chain: bidirectional -> MNTP -> SimCSE -> export (what jobs/adapt.py runs).

Output layout:
    OUTPUT/encoder/            the final encoder folder (Encoder.from_pretrained loads it)
    OUTPUT/adapters/<stage>/   each stage's LoRA adapter, peft format (apply in stage order)
    OUTPUT/stages/<stage>/     the encoder after each earlier stage (for evaluation)
    OUTPUT/logs/<stage>.jsonl  step logs; OUTPUT/loss_curves.png; OUTPUT/adapt_summary.json
    OUTPUT/ray_results/        Ray Train checkpoints (default storage_path)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from l2v_core.default_model import is_default_model
from l2v_core.loading import resolve_model_path

from .config import AdaptConfig
from .data import mntp_blocks, simcse_sentences
from .export import adapter_base, export_encoder, keep_adapter_and_log, write_adapters_readme
from .mntp_loop import mntp_loop
from .plot import plot_losses
from .simcse_loop import simcse_loop
from .trainer import check_storage, run_stage

logger = logging.getLogger(__name__)


def model_reference(base_model: str | None) -> str:
    """What workers load: "default" (each node resolves its own cache) or an absolute folder/id."""
    return "default" if is_default_model(base_model) else resolve_model_path(base_model)


def run_chain(cfg: AdaptConfig, *, corpus: str, output: str | Path, simcse_corpus: str | None = None) -> dict:
    """Run the configured stages in order and export. Returns the summary (also written as JSON)."""
    output = Path(output).resolve()
    explicit_storage = cfg.cluster.storage_path is not None
    storage = check_storage(cfg.cluster.storage_path or str(output / "ray_results"), explicit=explicit_storage)
    run_name = cfg.cluster.name or output.name
    model_ref = model_reference(cfg.base_model)
    # SimCSE trained with an instruction: the encoder uses it for symmetric similarity.
    instructions = {"sts": cfg.simcse.instruction} if cfg.simcse.instruction and "simcse" in cfg.stages else {}
    history: list[dict] = [{"name": "bidirectional", "note": "attention switched to bidirectional, no training"}]
    checkpoints, logs, adapter_bases = [], {}, []

    for index, stage_name in enumerate(cfg.stages):
        stage = getattr(cfg, stage_name)
        if stage_name == "mntp":
            loop = mntp_loop
            dataset = mntp_blocks(
                corpus, model_path=model_ref, block_size=stage.block_size, text_column=cfg.text_column
            )
        else:
            loop = simcse_loop
            split = stage.split_sentences or simcse_corpus is None
            dataset = simcse_sentences(simcse_corpus or corpus, model_path=model_ref, max_length=stage.max_length,
                                       split=split, min_chars=stage.min_chars, text_column=cfg.text_column,
                                       instruction=stage.instruction)
        loop_config = {"stage": stage.model_dump(), "model_path": model_ref, "merge": list(checkpoints),
                       "log_path": str(output / "logs" / f"{stage_name}.live.jsonl"), "strategy": cfg.cluster.strategy,
                       "cpu_threads": cfg.cluster.threads_per_worker or max(1, int(cfg.cluster.cpus_per_worker))}
        start = time.perf_counter()
        result = run_stage(loop, loop_config, cfg.cluster, name=f"{run_name}-{stage_name}", storage_path=storage,
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
            "final_loss": result.metrics.get("loss"),
            "corpus": simcse_corpus if stage_name == "simcse" and simcse_corpus else corpus,
            "lora": stage.lora.model_dump(), "adapter_base": base,
            **({"block_size": stage.block_size, "mask_probability": stage.mask_probability} if stage_name == "mntp"
               else {"max_length": stage.max_length, "scale": stage.scale,
                     "attention_dropout": stage.attention_dropout}),
        })
        logger.info("stage %s done in %.1f s (loss %s)", stage_name, wall, result.metrics.get("loss"))
        if index < len(cfg.stages) - 1:
            export_encoder(model_ref, checkpoints, output / "stages" / stage_name / "encoder",
                           pooling=cfg.simcse.pooling, max_length=512, stages=list(history), instructions=instructions)

    start = time.perf_counter()
    encoder_dir = export_encoder(model_ref, checkpoints, output / "encoder", pooling=cfg.simcse.pooling,
                                 max_length=512, stages=history, instructions=instructions)
    write_adapters_readme(output / "adapters", adapter_bases)
    png = plot_losses(logs, output / "loss_curves.png") if logs else None
    summary = {
        "encoder": str(encoder_dir), "adapters": str(output / "adapters"), "loss_curves": str(png) if png else None,
        "storage_path": storage, "run_name": run_name, "stages": history,
        "export_wall_time_s": round(time.perf_counter() - start, 1),
    }
    (output / "adapt_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
