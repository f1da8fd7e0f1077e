"""The service's settings: one validated object shared by jobs/serve.py, `serve run` and a Serve
config file (`args:` of the application)."""

from __future__ import annotations

import hashlib
import os

from pydantic import BaseModel, ConfigDict, Field


class ServiceConfig(BaseModel):
    """Everything the application needs (host and port are Serve's own settings, not the app's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: str = Field(description="output folder of jobs/embed_corpus.py; its published version is served")
    model: str | None = Field(None, description="encoder folder, when it moved since the index was built")
    replicas: int = Field(1, ge=1, description="Serve replicas, each with its own encoder and index")
    max_batch_size: int = Field(32, ge=1, description="requests that share one batch of forward passes")
    batch_wait_ms: float = Field(10.0, ge=0, description="how long a batch waits for more requests")
    batch_tokens: int = Field(16384, ge=1, description="padded tokens per forward pass (as Encoder.encode)")
    max_padding: float = Field(0.1, ge=0, le=1, description="padding share a forward pass may hold (as Encoder.encode; "
                                                           "1.0 puts any lengths together)")
    api_key_env: str | None = Field(None, description="environment variable holding the API key (none: no key)")
    poll_s: float = Field(2.0, gt=0, description="how often CURRENT is checked for a new version")
    served_model_name: str = Field("l2v", min_length=1, description="the `model` name of /v1/embeddings")
    max_k: int = Field(100, ge=1, description="largest k a search may ask for")
    max_inputs: int = Field(256, ge=1, description="most queries or inputs in one request")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body")
    replica_cpus: float = Field(1.0, ge=0, description="CPUs reserved per replica (also its torch threads)")
    replica_gpus: float = Field(0.0, ge=0, description="GPUs per replica (the encoder runs in bf16 on one)")

    def api_key_sha256(self) -> str | None:
        """The key's hash, read from the environment where the app is built: only the hash travels
        to the replicas (nothing secret in Serve's configs or actor arguments)."""
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ValueError(f"api_key_env names {self.api_key_env}, but that environment variable is not set "
                             f"(or empty): set it to the key clients must send as 'Authorization: Bearer KEY'")
        return hashlib.sha256(key.encode()).hexdigest()

    def max_ongoing_requests(self) -> int:
        # a replica must accept a full batch, and queue the next while one runs
        return max(64, 2 * self.max_batch_size)
