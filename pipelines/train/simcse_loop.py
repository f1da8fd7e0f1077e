"""The SimCSE stage loop (runs on every Ray Train worker).

Read it top to bottom: load the decoder body, merge the earlier adapters (MNTP), switch to
bidirectional attention, add a fresh LoRA, raise attention dropout (the only augmentation), then
for each batch of sentences: embed the batch twice in one forward pass (two dropout views),
gather both views from every worker with gradient, and take the contrastive loss over the
global batch.

train_loop_config: a `LoopConfig` as a dict (pipelines/train/loop_config.py).
"""

from __future__ import annotations

import time

import ray.train

from l2v_core.contrastive import PooledEmbedder, set_attention_dropout, simcse_loss

from .config import SimCSESettings
from .distributed import all_gather_with_grad
from .loop_config import LoopConfig
from .loop_tools import (
    DROPOUT,
    autocast,
    batches,
    clip_and_step,
    embedding_body,
    evaluate_now,
    fault_point,
    pad_right,
    report,
    seed_everything,
    start_training,
    start_worker,
    stream_seed,
    stsb_dev_score,
)


def simcse_loop(raw_config: dict) -> None:
    config = LoopConfig.from_dict(raw_config)
    stage = SimCSESettings.model_validate(config.stage)
    rank, world, device, nodes, log = start_worker("simcse", config)

    body, lora_body, tokenizer = embedding_body(config, stage, device)
    set_attention_dropout(body, stage.attention_dropout)  # dropout is SimCSE's only augmentation
    embedder = PooledEmbedder(lora_body, stage.pooling).train()
    embedder, optimizer, scheduler, state = start_training(embedder, lora_body, stage, config, log, counted=body,
                                                           workers=(world, nodes))
    start_step = state.step
    seed_everything(stream_seed(stage.seed, rank, state.step, DROPOUT))  # dropout differs per rank and step
    per_worker = stage.batch_size // max(world, 1)
    shard = ray.train.get_dataset_shard("train")

    step_start = time.perf_counter()
    for batch in batches(shard, per_worker, state, stage.steps, seed=stage.seed, shuffle_rows=8 * per_worker):
        ids, attention = pad_right(batch["input_ids"], tokenizer.pad_token_id)  # (b, s)
        pool_mask, _ = pad_right(batch["pool_mask"], 0)
        # Both views in one forward pass: dropout draws differ per row, and DDP sees one forward.
        with autocast(stage, device):
            both = embedder(ids.repeat(2, 1).to(device), attention.repeat(2, 1).to(device),
                            pool_mask.repeat(2, 1).to(device))  # (2b, d)
        view_a, view_b = both[: len(ids)], both[len(ids):]
        loss = simcse_loss(view_a, view_b, scale=stage.scale, gather_fn=all_gather_with_grad)  # global batch
        loss.backward()
        grad_norm = clip_and_step(lora_body.parameters(), optimizer, scheduler, stage.max_grad_norm)
        state.step += 1
        fault_point(config, "simcse", state.step)  # crash tests only

        step_time = time.perf_counter() - step_start
        step_start = time.perf_counter()
        if state.step % stage.log_every == 0 or state.step == stage.steps:
            log.step(step=state.step, loss=loss.item(), lr=scheduler.get_last_lr()[0], grad_norm=grad_norm,
                     step_time_s=round(step_time, 4),
                     tokens_per_s_per_worker=round(2 * int(attention.sum()) / step_time, 1), epoch=state.epoch)
        if evaluate_now(stage, state.step):
            log.step(step=state.step, stsb_dev=stsb_dev_score(embedder, tokenizer, config.eval_pairs, stage, device))
            step_start = time.perf_counter()  # the evaluation is not part of the next step's time
        if state.step % stage.checkpoint_every == 0 or state.step == stage.steps:
            metrics = {"loss": loss.item(), "start_step": start_step, "nodes": nodes}
            report(state, metrics, lora_body, optimizer, scheduler, log,
                   {"stage": "simcse", "model_path": config.model_path})
    log.close()  # the tracker is done: an MLflow run ends as FINISHED
