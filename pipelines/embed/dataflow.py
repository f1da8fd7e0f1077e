"""The Ray wiring of a run besides the plan (`plan.py`): where the embed actors go, the encoder's
description, and the embed Dataset (read planned rows -> tokenize -> embed -> write). The
per-batch functions it wires live in `batch_udfs.py`."""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import ray

from .. import faults
from .batch_udfs import EmbedActor, read_planned_rows, tokenize_rows, vectors_schema
from .config import EmbedConfig
from .plan import PlanSummary
from .scan import Columns

logger = logging.getLogger(__name__)

# An embed actor that dies (OOM kill, lost node) is restarted by Ray and its in-flight batches
# are retried; a retried batch is written once. Ray Data 2.60 defaults both to -1 (forever): set
# here so that a change of default cannot turn a lost actor into a failed run, and bounded so
# that a batch that kills every actor it lands on (a poison input, an OOM on the same texts)
# fails the run after a few tries instead of restarting actors forever. Ray 2.60 warns that
# passing remote args this way is deprecated (removal planned for 2.64) but offers no named
# parameter for these two yet.
ACTOR_MAX_RESTARTS = 4
ACTOR_MAX_TASK_RETRIES = 4
WRITE_BATCHES_PER_FILE = 8  # vectors files hold about this many embed batches
ACTOR_START_TIMEOUT_S = 1800  # model loading on every actor (a 7B model from shared storage takes minutes)


def ensure_ray() -> None:
    """Join the cluster this driver runs in (ray job submit) or start a local one."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()  # inside `ray job submit`: the job's runtime_env applies; adding one here would conflict
    else:
        ray.init(runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})


@dataclass(frozen=True)
class Placement:
    """Where the embed actors run."""

    device: str
    num_gpus: int  # per actor: 1 on GPUs, else 0
    actors: int


@dataclass(frozen=True)
class EncoderInfo:
    """The encoder as the run sees it, described where the actors run (not on the driver)."""

    source: str  # "default" or the resolved path
    tokenizer_path: str
    identity: dict  # Encoder.identity()
    dim: int
    max_length: int
    instructions: dict
    settings: dict
    device: str
    dtype: str
    chunking_problem: str | None = None  # --chunk-tokens cannot work with this encoder: why


def placement(cfg: EmbedConfig) -> Placement:
    """Where embed actors run: one per GPU with num_gpus=1, else CPU actors."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    device = cfg.device or ("cuda" if gpus else "cpu")
    on_gpu = device.startswith("cuda")
    if on_gpu and not gpus:
        raise ValueError(f"--device {device} but the Ray cluster has no GPU; drop --device or add GPU nodes")
    actors = cfg.num_actors or (gpus if on_gpu else 1)
    cpus = resources.get("CPU", 0)
    if actors * cfg.actor_cpus + 1 > cpus:
        # Actors hold their CPUs for the whole run: with none left, the read, tokenize and write
        # tasks never get scheduled and the run waits forever.
        raise ValueError(
            f"{actors} embed actor(s) x {cfg.actor_cpus:g} CPU leave less than one of the cluster's {cpus:g} CPUs "
            f"for reading, tokenizing and writing; lower --num-actors or --actor-cpus, or add CPUs"
        )
    return Placement(device, 1 if on_gpu else 0, actors)


@ray.remote(num_cpus=1)
def _describe(model: str | None, max_length: int | None, device: str, dtype: str | None,
              chunking: dict | None, instruction: str | None) -> EncoderInfo:
    from l2v_core import Encoder, pick_device_and_dtype, resolve_model_path

    device_, dtype_ = pick_device_and_dtype(device, dtype)
    kwargs = {"max_length": max_length} if max_length else {}
    encoder = Encoder.from_pretrained(model, device=device_, dtype=dtype_, **kwargs)
    problem = None
    if chunking:
        from l2v_core import check_chunking

        try:
            check_chunking(encoder.tokenizer, chunk_tokens=chunking["chunk_tokens"],
                           overlap=chunking["chunk_overlap"], max_length=encoder.settings.max_length,
                           instruction=document_instruction(instruction, encoder.settings.instructions))
        except ValueError as err:
            problem = str(err)
    return EncoderInfo(
        chunking_problem=problem,
        source="default" if model in (None, "", "default") else resolve_model_path(model),
        tokenizer_path=resolve_model_path(model),
        identity=encoder.identity(),
        dim=encoder.dim,
        max_length=encoder.settings.max_length,
        instructions=dict(encoder.settings.instructions),
        settings=encoder.settings.model_dump(),
        device=str(device_),
        dtype=str(dtype_),
    )


def describe_encoder(cfg: EmbedConfig, where: Placement) -> ray.ObjectRef:
    """Load the encoder once where the actors will run (not on the driver): its identity, dim and
    tokenizer path. Returns a reference; `ray.get` it."""
    return _describe.options(num_gpus=where.num_gpus).remote(cfg.model, cfg.max_length, where.device, cfg.dtype,
                                                             cfg.chunking, cfg.instruction)


def embed_planned_rows(plan: PlanSummary, cfg: EmbedConfig, encoder: EncoderInfo, where: Placement,
                       vectors_dir: Path, stats_dir: Path) -> float:
    """read the planned rows -> tokenize (CPU tasks) -> embed (actors) -> vectors parquet. Each
    read unit is one input file with its planned rows (read from plan/embed by the task itself).
    Returns the seconds taken."""
    start = time.perf_counter()
    vectors_dir.mkdir(parents=True, exist_ok=True)
    units = [
        {"path": path, "file_index": i, "rows": n, "plan_dir": str(plan.plan_dir)}
        for i, (path, n) in enumerate(zip(plan.paths, plan.to_embed_by_file)) if n
    ]
    if not units:
        pq.write_table(vectors_schema(encoder.dim, cfg.store_text, cfg.chunking is not None).empty_table(),
                       vectors_dir / "empty.parquet")
        return 0.0
    context = ray.data.DataContext.get_current()
    context.max_errored_blocks = 0  # a failed block fails the run: no silent loss
    # Start work only once every embed actor has loaded its model: otherwise the first actor up
    # takes every block of a small or single-file corpus while the others are still loading.
    # placement() has already refused pools the cluster cannot hold, so this wait ends.
    context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    columns = Columns(cfg.id_column, cfg.text_column, cfg.title_column)
    instruction = effective_instruction(cfg, encoder)
    ds = ray.data.from_items(units, override_num_blocks=len(units))
    # Read and tokenize fuse into one CPU task stage; the repartition below keeps them out of the
    # embed actors (fused in, tokenizing would stall the GPU).
    chunked = cfg.chunking is not None
    ds = ds.map_batches(read_planned_rows, batch_size=1, batch_format="pyarrow", num_cpus=cfg.tokenize_cpus,
                        fn_kwargs={"columns": columns, "store_text": cfg.store_text, "chunked": chunked})
    ds = ds.map_batches(tokenize_rows, batch_size=cfg.tokenize_batch_size, batch_format="pyarrow",
                        num_cpus=cfg.tokenize_cpus,
                        fn_kwargs={"model_path": encoder.tokenizer_path, "max_length": encoder.max_length,
                                   "instruction": instruction, "chunking": cfg.chunking})
    # One file is one read unit, so a large file would reach a single embed actor as one big
    # block: cutting blocks to the embed batch size (a streaming split, no shuffle) spreads every
    # file's rows over all actors.
    ds = ds.repartition(target_num_rows_per_block=cfg.batch_size)
    # the deprecation warning for the restart limits (see ACTOR_MAX_RESTARTS) would only confuse users
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = _embed_on_actors(ds, cfg, encoder, where, stats_dir)
    # Small blocks would make as many small files; a few batches per file keeps both the file count
    # and the work an interrupted run loses (salvage reuses written files) small.
    ds.write_parquet(str(vectors_dir), min_rows_per_file=cfg.batch_size * WRITE_BATCHES_PER_FILE)
    return time.perf_counter() - start


def _embed_on_actors(ds: ray.data.Dataset, cfg: EmbedConfig, encoder: EncoderInfo, where: Placement,
                     stats_dir: Path) -> ray.data.Dataset:
    return ds.map_batches(
        EmbedActor,
        fn_constructor_kwargs={
            "model": cfg.model, "identity": encoder.identity, "max_length": cfg.max_length,
            "device": where.device, "dtype": cfg.dtype, "batch_tokens": cfg.batch_tokens,
            "store_text": cfg.store_text, "stats_dir": str(stats_dir), "max_padding": cfg.max_padding,
            "cpu_threads": cfg.cpu_threads, "actors": where.actors,
            "fault": faults.for_actor(), "chunked": cfg.chunking is not None,
        },
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=where.actors),
        num_gpus=where.num_gpus,
        num_cpus=cfg.actor_cpus,
        max_restarts=ACTOR_MAX_RESTARTS,
        max_task_retries=ACTOR_MAX_TASK_RETRIES,
    )


def effective_instruction(cfg: EmbedConfig, encoder: EncoderInfo) -> str | None:
    """The instruction put before documents (`document_instruction`)."""
    return document_instruction(cfg.instruction, encoder.instructions)


def document_instruction(configured: str | None, instructions: dict) -> str | None:
    """The config's instruction, else the encoder's 'document' one."""
    return configured if configured is not None else instructions.get("document")
