"""`l2v_config.json`: the settings an exported encoder folder carries with its weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

CONFIG_FILE = "l2v_config.json"
L2V_VERSION = "0.1.0"

PoolingMode = Literal["mean", "weighted_mean", "last_token", "first_token"]
POOLING_MODES: tuple[str, ...] = ("mean", "weighted_mean", "last_token", "first_token")


class EncoderSettings(BaseModel):
    """How an encoder turns text into a vector. Saved as `l2v_config.json` beside the weights."""

    model_config = ConfigDict(extra="forbid")

    pooling: PoolingMode = Field("mean", description="How token states become one vector.")
    max_length: int = Field(
        512, gt=1, description="Tokens per text (instruction included); longer texts are truncated."
    )
    bidirectional: bool = Field(True, description="Every token attends to every non-padding token.")
    instructions: dict[str, str] = Field(
        default_factory=dict,
        description="Named default instructions, e.g. {'query': 'Given a claim, retrieve ...'}.",
    )
    base_model: str | None = Field(None, description="The model the weights came from (name or path).")
    base_model_sha256: str | None = Field(None, description="weights_sha256 of the base model, when known.")
    stages: list[dict[str, Any]] = Field(
        default_factory=list, description="Adaptation history: one entry per stage (name, steps, wall_time_s, ...)."
    )
    l2v_version: str = Field(L2V_VERSION, description="The l2v-ray version that wrote this file.")

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CONFIG_FILE
        path.write_text(json.dumps(self.model_dump(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> EncoderSettings:
        path = Path(folder) / CONFIG_FILE
        try:
            return cls.model_validate_json(path.read_text())
        except ValueError as err:
            raise ValueError(f"{path} is not a valid l2v config: {err}") from err
