"""Settings of an embedding run, validated with pydantic (`extra="forbid"`: a typo is an error).

`jobs/embed_corpus.py` builds an `EmbedConfig` from its command line (or a YAML file given with
`--config`, command-line flags winning).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IndexKind = Literal["auto", "flat", "ivf", "ivfpq", "hnsw"]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """'4GiB', '512M', '1.5g', 1000 -> bytes (powers of 1024 for every suffix)."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"cannot read size {text!r}; write it like 4GiB, 512MiB, 2G or a number of bytes")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** "_kmgt".index(unit or "_"))


class EmbedConfig(BaseModel):
    """One embedding run: where the corpus is, how to read it, which model, which index."""

    model_config = ConfigDict(extra="forbid")

    input: list[str] = Field(
        ..., min_length=1,
        description="Parquet files, folders, globs or URIs (s3://, gs://, file://) that pyarrow understands.",
    )
    output: str = Field(
        ..., description="Output root: holds versions/, CURRENT and the lock. A local or shared (NFS) path."
    )
    id_column: str = Field("id", description="Column holding each document's id (strings or integers).")
    text_column: str = Field("text", description="Column holding the text to embed.")
    title_column: str | None = Field(
        None, description="Optional column joined in front of the text ('title\\n\\ntext')."
    )
    model: str | None = Field(
        None, description="Exported encoder folder, model folder or name; null = the default model."
    )
    max_length: int | None = Field(None, gt=1, description="Override the encoder's max tokens per text.")
    instruction: str | None = Field(
        None, description="Instruction put before every document; null = the encoder's 'document' instruction, if any.",
    )
    chunk_tokens: int | None = Field(
        None, ge=8,
        description="Split each document into passages of at most this many tokens (the encoder's tokenizer; the "
                    "instruction and the title count inside the window) and embed every passage; null = one vector "
                    "per document, texts beyond max_length truncated.",
    )
    chunk_overlap: int = Field(0, ge=0, description="Tokens of text consecutive passages share (with chunk_tokens).")
    store_text: bool = Field(True, description="Keep each text in the vectors parquet so that search can show it.")
    index: IndexKind = Field("auto", description="FAISS index: auto picks flat, ivf or ivfpq from size and memory.")
    index_memory: str = Field(
        "4GiB", description="Memory budget of the index (auto picks a compressed index beyond it)."
    )
    recall_queries: int = Field(200, ge=1, description="Sampled corpus vectors used to measure recall@10.")
    recall_target: float = Field(0.95, gt=0, le=1, description="nprobe / efSearch grow until recall@10 reaches this.")
    num_actors: int | None = Field(None, ge=1, description="Embed actors; default one per GPU, else 1 CPU actor.")
    cpu_threads: int | None = Field(
        None, ge=1, description="Torch threads per CPU embed actor; default: its node's cores / actors."
    )
    actor_cpus: float = Field(
        1.0, gt=0,
        description="CPUs Ray reserves per embed actor (at least one CPU must stay free for reading and tokenizing).",
    )
    device: str | None = Field(None, description="Embed actors' device; default cuda when GPUs exist, else cpu.")
    dtype: str | None = Field(None, description="Embed actors' dtype; default bf16 on CUDA, float32 on CPU.")
    batch_size: int = Field(512, ge=1, description="Rows per embed batch; rows are sorted by length inside each batch.")
    batch_tokens: int = Field(16384, ge=1, description="Padded tokens per forward pass (rows x longest).")
    max_padding: float = Field(
        0.1, ge=0, lt=1, description="A micro-batch closes before its padding share would exceed this.",
    )
    tokenize_batch_size: int = Field(256, ge=1, description="Rows per CPU tokenize batch.")
    tokenize_cpus: float = Field(
        0.5, gt=0,
        description="CPUs reserved per read+tokenize task (not 1: keeps the stage apart from the embed actors).",
    )
    skip_bad_files: bool = Field(
        False,
        description="Skip unreadable parquet files instead of failing (listed in the manifest's input.bad_files).",
    )
    keep_versions: int = Field(
        3, ge=1, description="The newest N complete versions are kept, plus the published one; older ones are pruned.",
    )
    incremental: bool = Field(
        False, description="Reuse the published version's vectors for unchanged (id, content_hash); drop deleted ids.",
    )
    seed: int = Field(0, description="Seed of the index's training and recall samples.")
    plan_only: bool = Field(
        False,
        description="Scan, dedupe and diff, write the plan to an unpublished version folder and print it; no model "
                    "is loaded, nothing is embedded or published.",
    )
    plan_partitions: int | None = Field(
        None, ge=1, le=65536,
        description="Id partitions of the plan's dedupe and diff; default: about one per million rows, at least one "
                    "per input file.",
    )

    @field_validator("input", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, (str, Path)) else value

    @model_validator(mode="after")
    def _chunking(self) -> EmbedConfig:
        if self.chunk_overlap and self.chunk_tokens is None:
            raise ValueError("chunk_overlap needs chunk_tokens: set --chunk-tokens N to split documents into passages")
        if self.chunk_tokens is not None and self.chunk_overlap >= self.chunk_tokens // 2:
            raise ValueError(f"chunk_overlap {self.chunk_overlap} must be under half of chunk_tokens "
                             f"{self.chunk_tokens}: each passage must add new text; lower --chunk-overlap")
        return self

    @property
    def chunking(self) -> dict | None:
        """The passage settings as recorded in the manifest and the vector identity; None when off."""
        if self.chunk_tokens is None:
            return None
        return {"chunk_tokens": self.chunk_tokens, "chunk_overlap": self.chunk_overlap}

    @field_validator("index_memory")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_size(value)
        return value

    @property
    def index_memory_bytes(self) -> int:
        return parse_size(self.index_memory)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> EmbedConfig:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of EmbedConfig fields, got {type(data).__name__}")
        return cls.model_validate({**data, **{k: v for k, v in overrides.items() if v is not None}})
