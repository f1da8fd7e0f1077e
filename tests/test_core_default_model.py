"""The real default model (SmolLM2-135M-Instruct, offline) and parity with the reference llm2vec."""

import time

import numpy as np
import pytest
from conftest import shared_fixtures_dir

from l2v_core import Encoder, set_attention_mode
from l2v_core.default_model import default_model_dir

FIXTURE = shared_fixtures_dir() / "llm2vec_reference_smollm2.npz"

# (fixture key, bidirectional, pooling, with instruction, minimum per-row cosine)
CASES = [
    ("causal_mean", False, "mean", False, 0.9999),
    ("causal_mean_instruction", False, "mean", True, 0.99),
    ("bidirectional_mean", True, "mean", False, 0.9999),
    ("bidirectional_mean_instruction", True, "mean", True, 0.99),
    ("bidirectional_weighted_mean", True, "weighted_mean", False, 0.9999),
    ("bidirectional_last_token", True, "last_token", False, 0.9999),
]


def test_default_model_loads_from_the_cache_quickly(default_encoder):
    assert default_encoder.dim == 576 and default_encoder.settings.bidirectional
    start = time.perf_counter()
    Encoder.from_pretrained(default_model_dir())
    assert time.perf_counter() - start < 10  # generous; the figure itself lives in benchmarks


@pytest.fixture(scope="module")
def reference():
    if not FIXTURE.is_file():
        pytest.skip(f"reference fixture not found at {FIXTURE} (needs ../shared/fixtures beside the repo)")
    return np.load(FIXTURE, allow_pickle=False)


def _cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("key,bidirectional,pooling,instructed,threshold", CASES)
def test_parity_with_reference_llm2vec(default_encoder, reference, key, bidirectional, pooling, instructed, threshold):
    encoder = default_encoder
    sentences = [str(s) for s in reference["sentences"]]
    instruction = str(reference["instruction"]) if instructed else None
    saved = encoder.settings.model_copy()
    encoder.settings.bidirectional, encoder.settings.pooling = bidirectional, pooling
    set_attention_mode(encoder.model, bidirectional=bidirectional)
    try:
        together = encoder.encode(sentences, instruction, normalize=False)
        alone = np.stack([encoder.encode([s], instruction, normalize=False)[0] for s in sentences])
    finally:
        encoder.settings = saved
        set_attention_mode(encoder.model, bidirectional=saved.bidirectional)
    assert _cosine(together, reference[key]).min() >= threshold
    assert _cosine(alone, reference[key]).min() >= threshold
