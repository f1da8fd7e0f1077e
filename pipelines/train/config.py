"""Settings of an adaptation run, validated with pydantic (`extra="forbid"`: a typo is an error).

The YAML files in jobs/configs hold an `AdaptConfig`; `jobs/adapt.py` overrides the common
knobs from its command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from l2v_core.settings import PoolingMode


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSettings(_Strict):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | None = Field(
        None, description="Linear layer names to adapt; default q,k,v,o,gate,up,down (fused names for Phi-3)."
    )
    top_layers: int | None = Field(
        None, ge=1, description="Adapt only the last N decoder layers (backward stops there: ~3x cheaper steps on CPU "
        "with 10 of 30 layers); null = every layer, as in the reference recipe.",
    )


class StageSettings(_Strict):
    """What both stages share."""

    steps: int = Field(1000, gt=0, description="Optimizer steps.")
    batch_size: int = Field(32, gt=0, description="Global batch (rows per step over all workers).")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate (AdamW).")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps; then linear decay to 0.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(1.0, description="Gradient clipping; null to disable.")
    checkpoint_every: int = Field(
        100, gt=0, description="Steps between checkpoints (and reports); one more at the end."
    )
    log_every: int = Field(1, gt=0, description="Steps between step-log lines.")
    seed: int = Field(42, description="Seed of masking, dropout and data order.")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations (use_reentrant=False) to save memory."
    )
    dtype: Literal["float32", "bfloat16"] | None = Field(
        None, description="Weight dtype; null = bf16 on GPU, float32 on CPU."
    )
    autocast_bf16: bool = Field(
        False, description="Forward passes under torch.autocast(bfloat16) with float32 weights: mixed precision on "
        "GPUs, ~1.5x faster steps on CPUs with AMX / AVX512-BF16.",
    )
    eval_every: int | None = Field(
        None, gt=0, description="Steps between in-training evaluations on the STS-B dev pairs of `eval_stsb` "
        "(Spearman x100 of the body being trained, mean-pooled; logged as stsb_dev and drawn in loss_curves.png); "
        "also after the last step. null = none.",
    )


class MNTPSettings(StageSettings):
    block_size: int = Field(512, gt=8, description="Tokens per packed training block.")
    mask_probability: float = Field(0.2, gt=0, le=1, description="Share of tokens chosen as targets (Mistral: 0.8).")
    mask_token: str = Field("_", description="Mask token when the tokenizer has none (reference: '_', 'blank').")


class SimCSESettings(StageSettings):
    lr: float = Field(3e-5, gt=0, description="Peak learning rate (AdamW).")
    batch_size: int = Field(128, gt=1, description="Global batch of sentences; negatives span it.")
    max_length: int = Field(128, gt=1, description="Tokens per sentence.")
    scale: float = Field(20.0, gt=0, description="Cosine similarity scale (1 / temperature).")
    attention_dropout: float = Field(0.3, ge=0, lt=1, description="Attention dropout: the augmentation.")
    pooling: PoolingMode = Field("mean", description="Pooling in training and in the exported encoder.")
    min_chars: int = Field(20, ge=1, description="Sentences shorter than this are dropped.")
    instruction: str | None = Field(
        None, description="An instruction put before every training sentence (attended to, never pooled), e.g. "
        "the STS one; it becomes the exported encoder's 'sts' instruction. null = plain sentences (the reference).",
    )
    split_sentences: bool = Field(
        False, description="Split each corpus row into sentences "
        "(true for documents; false for a one-sentence-per-line file)."
    )


class SupervisedSettings(StageSettings):
    """Supervised contrastive on (query, positive, optional hard negative) pairs (LLM2Vec's fourth stage)."""

    lr: float = Field(2e-4, gt=0, description="Peak learning rate (AdamW); the paper's 2e-4.")
    warmup_steps: int = Field(300, ge=0, description="Linear warmup steps (the paper's 300); then linear decay to 0.")
    batch_size: int = Field(512, gt=1, description="Global batch of pairs; negatives span it (the paper's 512).")
    max_length: int = Field(512, gt=1, description="Tokens per text (a query's include its instruction).")
    scale: float = Field(50.0, gt=0, description="Cosine similarity scale (1 / temperature; the paper's 50).")
    pooling: PoolingMode = Field("mean", description="Pooling in training and in the exported encoder.")
    instruction: str | None = Field(
        "Given a premise, retrieve a hypothesis that is entailed by the premise",
        description="Put before every query (attended to, never pooled); positives and negatives get none. The "
        "exported encoder records it as its 'query' instruction. null = plain queries.",
    )
    chunk_size: int | None = Field(
        None, ge=1, description="Cached-gradient training (GradCache): embed the batch this many texts at a time, "
        "first without a graph, then again with one (one extra forward pass; memory of one chunk instead of the "
        "whole batch). null = the whole batch at once.",
    )
    query_column: str = Field("query", description="Pairs file column with the queries.")
    positive_column: str = Field("positive", description="Pairs file column with each query's positive.")
    negative_column: str | None = Field(
        "negative", description="Column with a hard negative (null where a row has none: in-batch negatives only). "
        "null = no hard negatives; a default name missing from the file also means none.",
    )
    instruction_column: str | None = Field(
        None, description="Column with a per-row query instruction (empty or null: `instruction`). null = none."
    )


class ClusterSettings(_Strict):
    num_workers: int = Field(2, ge=0, description="Ray Train workers (0 = in the driver process, for tests).")
    use_gpu: bool = Field(False, description="One GPU per worker.")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved per worker.")
    threads_per_worker: int | None = Field(
        None, ge=1, description="CPU training: torch intra-op threads per worker; null = int(cpus_per_worker)."
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp: each worker holds the whole model; fsdp: FSDP2 shards the decoder layers over the "
        "workers (models too large for one device).",
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Worker placement over nodes."
    )
    storage_path: str | None = Field(
        None, description="Checkpoints and results: local folder, NFS or cloud URI (shared, for multi-node). "
        "null = OUTPUT/ray_results."
    )
    name: str | None = Field(
        None, description="Run name; re-running with the same name resumes. null = from the output folder."
    )
    max_failures: int = Field(1, ge=-1, description="Worker-group restarts after a failure (-1 = unlimited).")
    num_to_keep: int = Field(2, gt=0, description="Checkpoints kept per stage.")


class AdaptConfig(_Strict):
    profile: str = Field(..., description="Name of this settings set (quick, paper, ...).")
    base_model: str | None = Field(None, description="Model name or folder; null = the default SmolLM2-135M-Instruct.")
    stages: list[Literal["mntp", "simcse", "supervised"]] = Field(
        ["mntp", "simcse"], description="Stages to run, in order (supervised needs a pairs file)."
    )
    text_column: str = Field("text", description="Text column of a parquet corpus.")
    mntp: MNTPSettings = Field(default_factory=MNTPSettings)
    simcse: SimCSESettings = Field(default_factory=SimCSESettings)
    supervised: SupervisedSettings = Field(default_factory=SupervisedSettings)
    export_max_length: int = Field(512, gt=1, description="Max tokens per text of the exported encoder.")
    eval_stsb: str | None = Field(
        None, description="Folder with STS-B's sts-dev.csv for the stages' in-training evaluation (`eval_every`); "
        "the dev split only: the test split stays for jobs/evaluate.py.",
    )
    eval_pairs: int = Field(300, gt=1, description="In-training evaluation: N STS-B dev pairs, spread over the file.")
    tracker: Literal["none", "tensorboard", "mlflow"] = Field(
        "none", description="Where rank 0 also sends loss, lr, grad norm, tokens/s and eval figures of every logged "
        "step. tensorboard: OUTPUT/tensorboard/<stage> (`tensorboard --logdir OUTPUT/tensorboard`). mlflow: one "
        "MLflow run per stage in the experiment named after the run (cluster.name), logged to MLFLOW_TRACKING_URI "
        "when set, else to a file store in OUTPUT/mlruns.",
    )
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)

    @model_validator(mode="after")
    def _stages_once(self):
        if len(set(self.stages)) != len(self.stages) or not self.stages:
            raise ValueError(f"stages {self.stages}: name each stage once, e.g. [mntp, simcse] or [mntp, supervised]")
        return self

    @model_validator(mode="after")
    def _evaluation_has_data(self):
        evaluated = [name for name in self.stages if getattr(self, name).eval_every]
        if evaluated and not self.eval_stsb:
            raise ValueError(f"{', '.join(evaluated)}: eval_every needs eval_stsb (a folder with STS-B's sts-dev.csv; "
                             f"--eval-stsb DIR)")
        return self

    @model_validator(mode="after")
    def _batches_split_evenly(self):
        workers = max(self.cluster.num_workers, 1)
        for name in self.stages:
            stage = getattr(self, name)
            if stage.batch_size % workers:
                raise ValueError(
                    f"{name}.batch_size={stage.batch_size} does not split over {workers} workers; "
                    f"use a multiple of {workers}"
                )
        return self


def load_config(path: str | Path) -> AdaptConfig:
    """Read and validate a YAML config; errors name the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return AdaptConfig.model_validate(raw)
    except (ValueError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: invalid adaptation config:\n{err}") from err
