"""Shared test fixtures: offline settings, tiny models, a local Ray, and the shared data folder."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

# Offline, always: nothing in the suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """`../shared/data` beside the repo (override with L2V_SHARED_DATA)."""
    return Path(os.environ.get("L2V_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_fixtures_dir() -> Path:
    return Path(os.environ.get("L2V_SHARED_FIXTURES", REPO.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set L2V_SHARED_DATA or place ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def _tiny_llama():
    from l2v_core.testing import tiny_model_and_tokenizer

    return tiny_model_and_tokenizer("llama")


@pytest.fixture
def tiny_llama(_tiny_llama):
    """(model, tokenizer): a 2-layer, 64-wide random Llama, deep-copied per test."""
    model, tokenizer = _tiny_llama
    return copy.deepcopy(model), tokenizer


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """An exported tiny random encoder folder (read-only by convention: copy it to modify)."""
    from l2v_core.testing import save_tiny_encoder

    return save_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder") / "encoder")


@pytest.fixture(scope="session")
def default_encoder():
    """The real default model (SmolLM2-135M-Instruct), loaded once per session."""
    from l2v_core import Encoder

    return Encoder.from_pretrained(None)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session: never joins a cluster left running on the machine."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def chunked_output(ray_session, tiny_encoder_dir, tmp_path_factory):
    """A published output of 8 long documents split into passages of at most 32 tokens by the real
    pipeline (tiny encoder): (output folder, {doc id: text}). Shared by the search and serve tests."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from embed_helpers import TOPICS, small_config

    from pipelines.embed import run_embed

    texts = {
        f"long{d}": "\n\n".join(
            f"Part {p} of report {d}: the {TOPICS[(d + p) % 10]} met the {TOPICS[(d * 3 + p * 7) % 10]} "
            f"near mile {d * 100 + p * 17}. It was {TOPICS[(p * 5 + d) % 10]} season again."
            for p in range(6))
        for d in range(8)
    }
    corpus = tmp_path_factory.mktemp("long_corpus")
    pq.write_table(pa.table({"id": list(texts), "text": list(texts.values())}), corpus / "part-0.parquet")
    output = tmp_path_factory.mktemp("chunked_out")
    run_embed(small_config(corpus, output, tiny_encoder_dir, chunk_tokens=32))
    return output, texts
