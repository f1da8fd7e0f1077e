"""What the training loops share: model building, optimizer, data position, checkpoints, the
step log. Runs inside Ray Train workers (and in-process with num_workers=0)."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from transformers import get_linear_schedule_with_warmup

from l2v_core.lora import load_adapter, load_lora_state_dict, merge_lora, save_adapter

from .loop_config import LoopConfig
from .trackers import TrackerSpec, open_tracker

# Full (unsharded) tensors on the CPU, trainable ones only: the same checkpoint for DDP, FSDP and
# one worker, and a few MB for a LoRA whatever the size of the frozen base.
FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
ADAPTER_DIR = "adapter"
STATE_FILE = "training_state.pt"
STEP_LOG = "steps.jsonl"


@dataclass
class TrainState:
    """Where training stands: what a checkpoint restores besides weights and optimizer."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of this worker's shard consumed in `epoch`


def start_worker(stage: str, config: LoopConfig) -> tuple[int, int, torch.device, int, StepLog]:
    """What every stage's loop starts with: (rank, world size, device, nodes spanned, step log),
    with this worker's CPU threads set."""
    rank, world = rank_and_world()
    set_cpu_threads(config.cpu_threads)
    device = ray.train.torch.get_device()
    log = StepLog(stage, rank, config.log_path, total=config.stage.get("steps"), tracker=config.tracker)
    return rank, world, device, count_nodes(), log


def fault_point(config: LoopConfig, stage: str, step: int) -> None:
    """Crash tests: fire `config.fault` when it names this stage and step ("mntp_step_3", or
    "mntp_step_3:kill" for SIGKILL), once per run (a restarted worker group carries on). The
    same mechanism and syntax as the embed pipeline's L2V_FAULT (pipelines/faults.py)."""
    if config.fault:
        from .. import faults

        faults.once(config.fault, f"{stage}_step_{step}", config.fault_dir)


def rank_and_world() -> tuple[int, int]:
    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def count_nodes() -> int:
    """How many distinct Ray nodes the worker group spans (every rank must call it)."""
    import torch.distributed as dist

    node = ray.get_runtime_context().get_node_id()
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    nodes = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node)
    return len(set(nodes))


def set_cpu_threads(threads: int | None) -> None:
    """One intra-op thread pool per worker sized to its CPU share: two workers that each spawn a
    thread per core on the same machine slow each other down."""
    if threads and not torch.cuda.is_available():
        torch.set_num_threads(int(threads))


def merge_earlier_adapters(body: torch.nn.Module, checkpoints: list) -> torch.nn.Module:
    """Fold the adapters of earlier stages (ray.train.Checkpoint or local folders) into `body`,
    in order. Returns the merged plain body (modules are replaced in place, so a causal LM that
    holds `body` sees the merged weights too)."""
    for ckpt in checkpoints:
        with _as_directory(ckpt) as folder:
            body = merge_lora(load_adapter(body, Path(folder) / ADAPTER_DIR))
    return body


class _as_directory:
    """A local folder for a ray.train.Checkpoint (downloaded if remote) or a plain path."""

    def __init__(self, ckpt):
        self.ckpt = ckpt
        self._cm = ckpt.as_directory() if hasattr(ckpt, "as_directory") else None

    def __enter__(self) -> str:
        return self._cm.__enter__() if self._cm else str(self.ckpt)

    def __exit__(self, *exc):
        if self._cm:
            self._cm.__exit__(*exc)


def embedding_body(config: LoopConfig, stage, device: torch.device):
    """The decoder body a contrastive stage trains -> (body, lora_body, tokenizer): loaded without
    its LM head, earlier adapters merged, bidirectional attention, a fresh LoRA (the same init on
    every rank), gradient checkpointing when the stage asks."""
    from l2v_core import enable_bidirectional, load_model
    from l2v_core.lora import apply_lora

    seed_everything(stage.seed)  # same LoRA init on every rank
    body, tokenizer = load_model(config.model_path, with_lm_head=False, device=device, dtype=stage.dtype)
    body = merge_earlier_adapters(body, config.merge)
    enable_bidirectional(body)
    lora_body = apply_lora(body, **stage.lora.model_dump())
    if stage.gradient_checkpointing:
        body.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return body, lora_body, tokenizer


def start_training(module: torch.nn.Module, lora_body, stage, config: LoopConfig, log: StepLog, *,
                   counted: torch.nn.Module, workers: tuple[int, int], note: str = ""):
    """Resume (adapter weights before sharding), wrap `module` for DDP/FSDP, log what trains
    (`counted`'s parameters; `workers`: world size and nodes), and build the optimizer and
    schedule (their state restored after sharding) -> (module, optimizer, scheduler, state)."""
    from l2v_core.lora import count_trainable

    from .distributed import prepare_for_training

    resumed = load_checkpoint(lora_body, log)
    module = prepare_for_training(module, config.strategy)
    trainable, total = count_trainable(counted)
    log.info(f"{workers[0]} worker(s) on {workers[1]} node(s); LoRA trains {trainable:,} of {total:,} parameters"
             + (f"; {note}" if note else ""))
    optimizer, scheduler = make_optimizer(lora_body, stage)
    state = resumed.restore_optimizer(lora_body, optimizer, scheduler)
    return module, optimizer, scheduler, state


def make_optimizer(model: torch.nn.Module, stage) -> tuple[torch.optim.Optimizer, object]:
    """AdamW on the trainable (LoRA) parameters; linear warmup then linear decay to 0."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, stage.warmup_steps, stage.steps)
    return optimizer, scheduler


@dataclass
class Resumed:
    """What the latest checkpoint of this run holds (nothing for a fresh run)."""

    state: TrainState
    optimizer: dict | None = None
    scheduler: dict | None = None

    def restore_optimizer(self, peft_model, optimizer, scheduler) -> TrainState:
        """Load the optimizer and schedule into the (possibly sharded) model's optimizer; returns the step."""
        if self.optimizer is not None:
            set_optimizer_state_dict(peft_model, optimizer, optim_state_dict=self.optimizer, options=FULL_STATE)
            scheduler.load_state_dict(self.scheduler)
        return self.state


def load_checkpoint(peft_model, log: StepLog) -> Resumed:
    """Load the adapter of this run's latest checkpoint, if any (a resumed or restarted run), into
    `peft_model`. Call it before the model is wrapped for training: the adapter file holds full
    tensors, which a sharded (FSDP) model cannot take as they are. The optimizer follows later,
    through `Resumed.restore_optimizer`."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return Resumed(TrainState())
    with ckpt.as_directory() as folder:
        from safetensors.torch import load_file

        folder = Path(folder)
        # peft saves keys without the adapter name; set_peft_model_state_dict expects exactly that.
        load_lora_state_dict(peft_model, load_file(str(folder / ADAPTER_DIR / "adapter_model.safetensors")))
        saved = torch.load(folder / STATE_FILE, weights_only=True)  # our own file, still no pickle of objects
        log.restore(folder / STEP_LOG)
    state = TrainState(**saved["state"])
    log.info(f"resumed from checkpoint at step {state.step} (epoch {state.epoch}, batch {state.batch_in_epoch})")
    return Resumed(state, saved["optimizer"], saved["scheduler"])


def batches(shard, batch_size: int, state: TrainState, total_steps: int, *, seed: int, shuffle_rows: int = 0,
            batch_format: str = "numpy") -> Iterator[dict]:
    """This worker's batches, epoch after epoch, until `total_steps`; updates `state` as it goes.

    On resume it skips the batches the checkpointed epoch had already consumed. Ray Data does not
    promise the same row order across runs, so the skipped rows may differ slightly from the
    ones seen before: the position is restored as far as Ray Data allows.
    """
    while state.step < total_steps:
        skip, seen = state.batch_in_epoch, 0
        for batch in shard.iter_batches(
            batch_size=batch_size, batch_format=batch_format, drop_last=True,
            local_shuffle_buffer_size=shuffle_rows or None,
            local_shuffle_seed=(seed + state.epoch) if shuffle_rows else None,
        ):
            seen += 1
            if seen <= skip:
                continue
            state.batch_in_epoch = seen
            yield batch
            if state.step >= total_steps:
                return
        if seen == 0:
            raise ValueError(
                f"this worker's data shard has fewer rows than one batch of {batch_size}; "
                f"use a larger corpus, a smaller batch_size or fewer workers"
            )
        state.epoch += 1
        state.batch_in_epoch = 0


def report(state: TrainState, metrics: dict, peft_model, optimizer, scheduler, log: StepLog, stage_info: dict) -> None:
    """Every rank reports (it is a barrier) and gathers the full adapter and optimizer state (a
    collective under FSDP); rank 0 alone writes and attaches the checkpoint."""
    rank, _ = rank_and_world()
    metrics = {**metrics, "step": state.step, "epoch": state.epoch}
    trainable = get_model_state_dict(peft_model, options=FULL_STATE)  # the LoRA tensors, whole
    optimizer_state = get_optimizer_state_dict(peft_model, optimizer, options=FULL_STATE)
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="l2v-ckpt-") as folder:
        folder = Path(folder)
        save_adapter(peft_model, folder / ADAPTER_DIR, state_dict=trainable)
        torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "state": asdict(state)},
                   folder / STATE_FILE)
        log.copy_to(folder / STEP_LOG)
        (folder / "stage.json").write_text(json.dumps({**stage_info, **metrics}, indent=2))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))


class StepLog:
    """Rank 0's step log: one console line (step/total, ETA) and one JSONL record per logged step.

    Records are kept in memory and copied into every checkpoint, so the log of a resumed run
    continues the checkpointed one (steps after the last checkpoint of a failed attempt are dropped).
    `path` (optional) gets a live copy on rank 0's machine; `tracker` (optional) the numeric fields
    of every record, in TensorBoard or MLflow (pipelines/train/trackers.py). `close()` when the stage
    is done (it ends the MLflow run).
    """

    UNTRACKED = ("step", "epoch", "elapsed_s")  # the x axes, not curves

    def __init__(self, stage: str, rank: int, path: str | None = None, *, total: int | None = None,
                 tracker: TrackerSpec | None = None):
        self.stage, self.rank, self.total = stage, rank, total
        self.records: list[dict] = []
        self.path = Path(path) if path and rank == 0 else None
        self._t0 = time.perf_counter()
        self._first: tuple[int, float] | None = None  # (step, time) of this process's first logged step
        self._tracker = open_tracker(tracker) if tracker and rank == 0 else None

    def info(self, message: str) -> None:
        if self.rank == 0:
            print(f"[{self.stage}] {message}", flush=True)

    def step(self, **record) -> None:
        if self.rank != 0:
            return
        now = time.perf_counter()
        record = {"stage": self.stage, "elapsed_s": round(now - self._t0, 3), **record}
        self.records.append(record)
        step = record.get("step", 0)
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in record.items() if k not in ("stage", "step"))
        print(f"[{self.stage}] step {step}/{self.total or '?'} {shown}{self._eta(step, now, record)}", flush=True)
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
        if self._tracker is not None:
            self._tracker.write(step, {k: v for k, v in record.items()
                                       if isinstance(v, int | float) and k not in self.UNTRACKED})

    def close(self) -> None:
        """The stage is done: close the tracker (an MLflow run ends as FINISHED)."""
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None

    def _eta(self, step: int, now: float, record: dict) -> str:
        """' eta 12m05s' from this process's pace (the first line: its step time), '' when unknown."""
        if not self.total:
            return ""
        if self._first is None:
            self._first = (step, now)
            per_step = record.get("step_time_s")
        else:
            done = step - self._first[0]
            per_step = (now - self._first[1]) / done if done > 0 else None
        if per_step is None:
            return ""
        left = int(per_step * max(self.total - step, 0))
        if left >= 3600:
            return f" eta {left // 3600}h{left % 3600 // 60:02d}m"
        return f" eta {left // 60}m{left % 60:02d}s"

    def restore(self, file: Path) -> None:
        if file.is_file():
            self.records = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
            if self.path:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, self.path)

    def copy_to(self, file: Path) -> None:
        file.write_text("".join(json.dumps(r) + "\n" for r in self.records))


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def clip_and_step(params, optimizer, scheduler, max_grad_norm: float | None) -> float:
    """Clip (if asked), step optimizer and scheduler, zero grads; returns the gradient norm."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm or float("inf"))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


def pad_right(rows, pad_id: int, dtype=torch.long) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged rows -> (padded (b, s), attention_mask (b, s)), padding on the right."""
    longest = max(len(r) for r in rows)
    out = torch.full((len(rows), longest), pad_id, dtype=dtype)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(np.asarray(r), dtype=dtype)  # copies: Ray hands read-only arrays
        mask[i, : len(r)] = 1
    return out, mask


def peak_memory_mb(device: torch.device) -> float:
    """This worker's peak memory so far: CUDA memory allocated by torch on a GPU, else the process's
    peak resident set (model, activations and everything else: Linux reports KiB)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def autocast(stage, device: torch.device):
    """The forward pass's precision context: bf16 autocast when the stage asks for it, else a no-op."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=stage.autocast_bf16)


def evaluate_now(stage, step: int) -> bool:
    """Whether the in-training evaluation runs after `step` (every `eval_every` steps and after the last)."""
    return bool(stage.eval_every) and (step % stage.eval_every == 0 or step == stage.steps)


# STS-B sentences are short (the longest dev sentence is 54 tokens of the default tokenizer, plus the
# instruction): 128 cuts none.
STSB_MAX_TOKENS = 128


def stsb_dev_score(embedder: torch.nn.Module, tokenizer, pairs: tuple, stage, device: torch.device,
                   batch_texts: int = 32) -> float:
    """Spearman x100 of the STS-B dev pairs (`LoopConfig.eval_pairs`) under the model being
    trained, scored by `pipelines.evaluation.evaluate_stsb` (what jobs/evaluate.py runs). Every
    rank runs it (FSDP shards need all of them); dropout is off while it runs."""
    from l2v_core import tokenize_texts
    from pipelines.evaluation import evaluate_stsb
    from pipelines.evaluation.data import StsPairs

    def embed(texts: list[str], instruction: str | None) -> np.ndarray:
        batch = tokenize_texts(tokenizer, texts, instruction, max_length=STSB_MAX_TOKENS)
        vectors = []
        for i in range(0, len(batch), batch_texts):
            ids, attention = pad_right(batch.input_ids[i:i + batch_texts], tokenizer.pad_token_id)
            pool, _ = pad_right(batch.pool_mask[i:i + batch_texts], 0)
            with autocast(stage, device):
                vectors.append(embedder(ids.to(device), attention.to(device), pool.to(device)).float().cpu())
        return torch.cat(vectors).numpy()

    first, second, scores = pairs
    embedder.eval()
    try:
        with torch.no_grad():
            return evaluate_stsb(embed, StsPairs(list(first), list(second), list(scores)))["spearman"]
    finally:
        embedder.train()


def seed_everything(seed: int) -> None:
    """Seed every random source a loop draws from: Python's `random`, numpy and torch (CPU and
    CUDA). The one seeding call of both loops: before the model is built (the LoRA init, the same
    on every rank) and again with `stream_seed` before the first step (dropout)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # every device's generator, CUDA included


MASKS, DROPOUT = 0, 1  # the streams a loop draws from after the model is built


def stream_seed(seed: int, rank: int, step: int, stream: int) -> int:
    """The seed of one rank's random stream (MASKS, DROPOUT) from `step` on: different on every
    rank (different draws for different rows), after a resume (no replay of the first steps'
    draws) and for each stream (masks and dropout never share draws); the same for the same
    (seed, rank, step, stream) on every run."""
    return seed * 100_003 + rank * 1009 + step + stream * 1_000_000_007
