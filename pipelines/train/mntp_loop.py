"""The MNTP stage loop (runs on every Ray Train worker).

Read it top to bottom: load the model with its LM head, merge earlier adapters, switch to
bidirectional attention, add a fresh LoRA to the body, then for each batch of packed blocks:
mask (80/10/10), predict each masked token from the hidden state just before it, step.

train_loop_config: a `LoopConfig` as a dict (pipelines/train/loop_config.py).
"""

from __future__ import annotations

import time

import ray.train
import torch

from l2v_core import enable_bidirectional, load_model
from l2v_core.contrastive import PooledEmbedder
from l2v_core.lora import apply_lora
from l2v_core.mntp import MNTPObjective, mask_tokens, resolve_mask_token_id

from .config import MNTPSettings
from .distributed import mean_over_ranks
from .loop_config import LoopConfig
from .loop_tools import (
    DROPOUT,
    MASKS,
    autocast,
    batches,
    clip_and_step,
    evaluate_now,
    fault_point,
    merge_earlier_adapters,
    report,
    seed_everything,
    start_training,
    start_worker,
    stream_seed,
    stsb_dev_score,
)


def mntp_loop(raw_config: dict) -> None:
    config = LoopConfig.from_dict(raw_config)
    stage = MNTPSettings.model_validate(config.stage)
    rank, world, device, nodes, log = start_worker("mntp", config)

    # Same seed on every rank for the LoRA init (DDP also broadcasts rank 0's weights).
    seed_everything(stage.seed)
    model, tokenizer = load_model(config.model_path, with_lm_head=True, device=device, dtype=stage.dtype)
    merge_earlier_adapters(model.base_model, config.merge)
    enable_bidirectional(model)
    lora_body = apply_lora(model.base_model, **stage.lora.model_dump())  # in place: `model` sees the LoRA
    if stage.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    objective, optimizer, scheduler, state = start_training(MNTPObjective(model), lora_body, stage, config, log,
                                                            counted=model, workers=(world, nodes))
    start_step = state.step
    mask_id = resolve_mask_token_id(tokenizer, stage.mask_token)
    special_ids = tokenizer.all_special_ids
    vocab_size = min(len(tokenizer), model.config.vocab_size)  # random replacements stay inside both
    # Masks and LoRA dropout differ per rank and step (a resumed run does not replay the same
    # draws) and are the same for the same seed on every run.
    seed_everything(stream_seed(stage.seed, rank, state.step, DROPOUT))
    generator = torch.Generator().manual_seed(stream_seed(stage.seed, rank, state.step, MASKS))
    per_worker = stage.batch_size // max(world, 1)
    dev_embedder = PooledEmbedder(lora_body, "mean")  # the body as the exported encoder pools it (eval_every)
    shard = ray.train.get_dataset_shard("train")

    step_start = time.perf_counter()
    for batch in batches(shard, per_worker, state, stage.steps, seed=stage.seed, shuffle_rows=8 * per_worker):
        input_ids = torch.as_tensor(batch["input_ids"], dtype=torch.long)  # (b, block_size)
        attention_mask = torch.ones_like(input_ids)  # packed blocks have no padding
        masked, labels = mask_tokens(
            input_ids, attention_mask, mask_token_id=mask_id, vocab_size=vocab_size,
            probability=stage.mask_probability, special_ids=special_ids, generator=generator,
        )
        with autocast(stage, device):
            loss = objective(masked.to(device), attention_mask.to(device), labels.to(device))
        loss.backward()
        grad_norm = clip_and_step(lora_body.parameters(), optimizer, scheduler, stage.max_grad_norm)
        state.step += 1
        fault_point(config, "mntp", state.step)  # crash tests only

        mean_loss = mean_over_ranks(loss.item(), device)
        step_time = time.perf_counter() - step_start
        step_start = time.perf_counter()
        if state.step % stage.log_every == 0 or state.step == stage.steps:
            log.step(step=state.step, loss=mean_loss, lr=scheduler.get_last_lr()[0], grad_norm=grad_norm,
                     step_time_s=round(step_time, 4), tokens_per_s_per_worker=round(input_ids.numel() / step_time, 1),
                     epoch=state.epoch)
        if evaluate_now(stage, state.step):
            score = stsb_dev_score(dev_embedder, tokenizer, config.eval_pairs, stage, device)
            log.step(step=state.step, stsb_dev=score)
            step_start = time.perf_counter()  # the evaluation is not part of the next step's time
        if state.step % stage.checkpoint_every == 0 or state.step == stage.steps:
            metrics = {"loss": mean_loss, "start_step": start_step, "nodes": nodes}
            report(state, metrics, lora_body, optimizer, scheduler, log,
                   {"stage": "mntp", "model_path": config.model_path})
    log.close()  # the tracker is done: an MLflow run ends as FINISHED
