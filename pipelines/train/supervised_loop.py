"""The supervised contrastive stage loop (runs on every Ray Train worker): LLM2Vec's fourth stage.

Read it top to bottom: load the decoder body, merge the earlier adapters (MNTP, SimCSE), switch
to bidirectional attention, add a fresh LoRA, then for each batch of (query, positive, optional
hard negative) pairs: embed every text of the batch, gather the embeddings (and the texts' keys)
from every worker so the negatives span the global batch, and take the contrastive loss (scale 50)
with false negatives masked out. Queries carry the instruction (`pipelines/train/pairs.py`).

With `chunk_size`, the step is cached-gradient (GradCache, `l2v_core.grad_cache`): the batch is
embedded a chunk at a time without a graph, the loss and its gradient with respect to the
embeddings are computed on the gathered no-grad embeddings (the gather's backward hands each
worker the gradient of its own rows), then each chunk runs again with a graph and takes its rows'
gradients: the memory of one chunk for a batch of any size, the same update as the plain step.

train_loop_config: a `LoopConfig` as a dict (pipelines/train/loop_config.py).
"""

from __future__ import annotations

import time

import numpy as np
import ray.train
import torch

from l2v_core.contrastive import NO_TEXT, PooledEmbedder, supervised_contrastive_loss
from l2v_core.grad_cache import cached_backward

from .config import SupervisedSettings
from .distributed import all_gather_with_grad, deferred_grad_sync, mean_over_ranks
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
    peak_memory_mb,
    report,
    seed_everything,
    start_training,
    start_worker,
    stream_seed,
    stsb_dev_score,
)


def pair_tensors(batch: dict, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch of b pairs -> every text in one right-padded tensor: the b queries, the b
    positives, then the hard negatives of the rows that have one. Returns input_ids, attention and
    pool masks (n, s) and the text keys (b, 3) (negative NO_TEXT where a row has none)."""
    keys = torch.as_tensor(np.stack(list(batch["keys"])), dtype=torch.long)  # (b, 3)
    has_negative = (keys[:, 2] != NO_TEXT).tolist()
    negatives = [row for row, has in zip(batch["negative_ids"], has_negative) if has]
    negative_pool = [row for row, has in zip(batch["negative_pool"], has_negative) if has]
    ids, attention = pad_right([*batch["query_ids"], *batch["positive_ids"], *negatives], pad_id)
    pool, _ = pad_right([*batch["query_pool"], *batch["positive_pool"], *negative_pool], 0)
    return ids, attention, pool, keys


def pairs_loss(keys: torch.Tensor, scale: float):
    """The loss of one worker's batch given the embeddings of all its texts (n, d), in
    `pair_tensors`' order; rows without a hard negative get a zero placeholder (masked by keys)."""
    b = keys.shape[0]
    has_negative = (keys[:, 2] != NO_TEXT).nonzero()[:, 0]

    def loss(embeddings: torch.Tensor) -> torch.Tensor:
        queries, positives = embeddings[:b], embeddings[b: 2 * b]
        negatives = torch.zeros_like(queries).index_put((has_negative.to(embeddings.device),), embeddings[2 * b:])
        return supervised_contrastive_loss(queries, positives, negatives, scale=scale,
                                           gather_fn=all_gather_with_grad, keys=keys.to(embeddings.device))
    return loss


def supervised_loop(raw_config: dict) -> None:
    config = LoopConfig.from_dict(raw_config)
    stage = SupervisedSettings.model_validate(config.stage)
    rank, world, device, nodes, log = start_worker("supervised", config)

    body, lora_body, tokenizer = embedding_body(config, stage, device)
    embedder = PooledEmbedder(lora_body, stage.pooling).train()
    steps = f"cached-gradient chunks of {stage.chunk_size}" if stage.chunk_size else "whole-batch"
    embedder, optimizer, scheduler, state = start_training(embedder, lora_body, stage, config, log, counted=body,
                                                           workers=(world, nodes), note=f"{steps} steps")
    start_step = state.step
    seed_everything(stream_seed(stage.seed, rank, state.step, DROPOUT))  # dropout differs per rank and step
    per_worker = stage.batch_size // max(world, 1)
    shard = ray.train.get_dataset_shard("train")

    def embed(ids, attention, pool):  # (n, s) -> (n, d)
        with autocast(stage, device):
            return embedder(ids.to(device), attention.to(device), pool.to(device))

    step_start = time.perf_counter()
    for batch in batches(shard, per_worker, state, stage.steps, seed=stage.seed, shuffle_rows=8 * per_worker):
        ids, attention, pool, keys = pair_tensors(batch, tokenizer.pad_token_id)
        loss_fn = pairs_loss(keys, stage.scale)  # over the global batch (gathered)
        if stage.chunk_size:
            loss = cached_backward(embed, ids, attention, pool, loss_fn, chunk_size=stage.chunk_size,
                                   no_sync=deferred_grad_sync(embedder))
        else:
            loss = loss_fn(embed(ids, attention, pool))
            loss.backward()
        grad_norm = clip_and_step(lora_body.parameters(), optimizer, scheduler, stage.max_grad_norm)
        state.step += 1
        fault_point(config, "supervised", state.step)  # crash tests only

        step_time = time.perf_counter() - step_start
        step_start = time.perf_counter()
        if state.step % stage.log_every == 0 or state.step == stage.steps:
            tokens = mean_over_ranks(float(attention.sum()), device)  # every rank's loss is the global one
            log.step(step=state.step, loss=loss.item(), lr=scheduler.get_last_lr()[0], grad_norm=grad_norm,
                     step_time_s=round(step_time, 4), tokens_per_s_per_worker=round(tokens / step_time, 1),
                     peak_memory_mb=peak_memory_mb(device), epoch=state.epoch)
        if evaluate_now(stage, state.step):
            log.step(step=state.step, stsb_dev=stsb_dev_score(embedder, tokenizer, config.eval_pairs, stage, device))
            step_start = time.perf_counter()  # the evaluation is not part of the next step's time
        if state.step % stage.checkpoint_every == 0 or state.step == stage.steps:
            metrics = {"loss": loss.item(), "start_step": start_step, "nodes": nodes}
            report(state, metrics, lora_body, optimizer, scheduler, log,
                   {"stage": "supervised", "model_path": config.model_path})
    log.close()  # the tracker is done: an MLflow run ends as FINISHED
