"""The driver SIGKILLed mid-run (after writing vectors, before the index and publish): the next
run takes over the stale lock, drops the half-written version and publishes the same vectors an
uninterrupted run gives."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from embed_helpers import clean_texts, small_config, write_corpus

from pipelines.embed import OutputLayout, run_embed

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_driver_killed_mid_run_then_rerun_equals_uninterrupted(ray_session, tiny_encoder_dir, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n=24, files=2)
    output = tmp_path / "out"
    env = dict(os.environ, L2V_FAULT="after_vectors:kill",
               RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)  # join this session's Ray
    command = [sys.executable, str(REPO / "jobs" / "embed_corpus.py"), "--input", str(corpus), "--output", str(output),
               "--model", str(tiny_encoder_dir), "--num-actors", "1", "--cpu-threads", "1", "--batch-size", "16"]
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    layout = OutputLayout(output)
    assert layout.current() is None and (output / ".lock").exists()
    [half] = layout.versions()
    assert not layout.is_complete(half) and any((layout.version_dir(half) / "vectors").glob("*.parquet"))

    result = run_embed(small_config(corpus, output, tiny_encoder_dir))
    assert layout.current() == result.version and layout.versions() == [result.version]
    vectors = pq.read_table(result.version_dir / "vectors").sort_by("id")
    ids = vectors.column("id").to_pylist()
    assert ids == sorted(f"doc{i}" for i in range(24))
    from l2v_core import Encoder

    texts = dict(zip((f"doc{i}" for i in range(24)), clean_texts(24)))
    expected = Encoder.from_pretrained(str(tiny_encoder_dir)).encode([texts[i] for i in ids])
    np.testing.assert_allclose(np.stack(vectors.column("embedding").to_numpy(zero_copy_only=False)), expected, atol=1e-5)
