"""Faults on a real local Ray. The driver SIGKILLed mid-run: the next run takes over the stale
lock, salvages the vectors the killed run wrote and publishes what an uninterrupted run gives.
An embed actor SIGKILLed mid-run: Ray restarts it and the counts stay exact. A second run while
a live process holds the lock: refused with exit code 3."""

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from embed_helpers import clean_texts, small_config, write_corpus

from pipelines.embed import OutputLayout, run_embed
from pipelines.embed.batch_udfs import vectors_schema
from pipelines.embed.incremental import copy_reused, reuse_sources, write_run_record
from pipelines.embed.plan import finish_plan, start_scan
from pipelines.embed.plan_tasks import planned_rows_of_file
from pipelines.embed.scan import Columns, content_hash

REPO = Path(__file__).resolve().parents[1]
DIM = 4
SCHEMA = vectors_schema(DIM, store_text=True)
IDENTITY = {"encoder": {"weights_sha256": "abc"}, "instruction": None}


def _embeddings(table) -> np.ndarray:
    return np.stack(table.column("embedding").to_numpy(zero_copy_only=False))


def _expected(encoder_dir, ids, n):
    """What an uninterrupted run gives: the encoder's own vectors for these ids."""
    from l2v_core import Encoder

    texts = dict(zip((f"doc{i}" for i in range(n)), clean_texts(n)))
    return Encoder.from_pretrained(str(encoder_dir)).encode([texts[i] for i in ids])


def _job(output, corpus, encoder_dir, ray_session, **env):
    command = [sys.executable, str(REPO / "jobs" / "embed_corpus.py"), "--input", str(corpus), "--output", str(output),
               "--model", str(encoder_dir), "--num-actors", "1", "--cpu-threads", "1", "--batch-size", "16"]
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address, **env)  # join this session's Ray
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------ salvage: the plan's steps alone
def _write_vectors(path: Path, texts: dict, seed: int) -> pa.Table:
    x = np.random.default_rng(seed).normal(size=(len(texts), DIM)).astype(np.float32)
    table = pa.table({
        "id": list(texts), "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), DIM),
        "content_hash": [content_hash(t) for t in texts.values()], "n_tokens": pa.array([3] * len(texts), pa.int32()),
        "truncated": [False] * len(texts), "text": list(texts.values()),
    }, schema=SCHEMA)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return table


@pytest.fixture
def interrupted_output(tmp_path):
    """A published version P (d0, d1 and a since-deleted id), then three unpublished folders:
    one embedded with another identity, one whose run record was never written, and the crashed
    run B (d0-d4, d3 with its old text, d2 twice as a retried write would leave it, and a file
    cut off before its footer)."""
    texts = {f"d{i}": f"text {i}" for i in range(10)}
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(
        pa.table({"id": list(texts), "text": [t + " new" if i == "d3" else t for i, t in texts.items()]}), corpus
    )
    layout = OutputLayout(tmp_path / "out")
    published, published_dir = layout.new_version()
    _write_vectors(published_dir / "vectors" / "p.parquet", {"d0": "text 0", "d1": "text 1", "gone": "x"}, seed=1)
    (published_dir / "manifest.json").write_text(json.dumps({  # the parts of a manifest that reuse reads
        "vector_identity": IDENTITY, "vectors": {"columns": SCHEMA.names}, "counts": {"rows_quarantined": 0}}))
    layout.publish(published)
    _, other = layout.new_version()
    write_run_record(other, {**IDENTITY, "instruction": "another"}, True)
    _write_vectors(other / "vectors" / "o.parquet", texts, seed=2)
    _, no_record = layout.new_version()
    _write_vectors(no_record / "vectors" / "n.parquet", texts, seed=3)
    crashed, crashed_dir = layout.new_version()
    write_run_record(crashed_dir, IDENTITY, True)
    _write_vectors(crashed_dir / "vectors" / "a.parquet", {f"d{i}": f"text {i}" for i in range(4)}, seed=4)
    _write_vectors(crashed_dir / "vectors" / "b.parquet", {"d2": "text 2", "d4": "text 4"}, seed=5)
    cut = crashed_dir / "vectors" / "c.parquet"
    _write_vectors(cut, {"d5": "text 5", "d6": "text 6"}, seed=6)
    cut.write_bytes(cut.read_bytes()[:100])
    return layout, published, crashed, corpus


def _plan(layout, published, corpus, plan_dir, incremental, partitions=3):
    sources = reuse_sources(layout, published, IDENTITY, True, incremental=incremental)
    refs = start_scan([str(corpus)], Columns("id", "text"), plan_dir, partitions)
    return finish_plan(refs, [str(corpus)], sources, SCHEMA, plan_dir, partitions, skip_bad_files=False,
                       previous=published, started=time.perf_counter())


@pytest.mark.parametrize("incremental", [True, False])
def test_salvage_takes_matching_rows_of_the_crashed_run_once(ray_session, interrupted_output, tmp_path, incremental):
    layout, published, crashed, corpus = interrupted_output
    plan = _plan(layout, published, corpus, tmp_path / "plan", incremental)
    # d3 changed its text and d5/d6 sit in the cut-off file: those and d7-d9 are embedded
    embedded = planned_rows_of_file(str(plan.plan_dir), 0).column("id").to_pylist()
    assert embedded == ["d3", "d5", "d6", "d7", "d8", "d9"] and plan.rows_to_embed == 6
    assert plan.salvaged_from == (crashed,) and [Path(p).name for p in plan.skipped_files] == ["c.parquet"]
    copy_reused(plan.sources, plan.reused_by_source, plan.plan_dir, tmp_path / "new" / "vectors")
    copied = pq.read_table(tmp_path / "new" / "vectors").sort_by("id")
    assert copied.column("id").to_pylist() == ["d0", "d1", "d2", "d4"]  # each id once
    assert plan.rows_read == plan.rows_to_embed + plan.rows_reused + plan.rows_quarantined
    crashed_a = pq.read_table(layout.version_dir(crashed) / "vectors" / "a.parquet")
    if incremental:  # the published version comes first; only what it lacks is salvaged
        assert plan.rows_reused_published == 2 and plan.rows_salvaged == 2 and plan.rows_deleted == 1
        source = pq.read_table(layout.version_dir(published) / "vectors")
    else:  # a full run never takes the published vectors, but does salvage its own crashed attempt
        assert plan.rows_reused_published == 0 and plan.rows_salvaged == 4 and plan.rows_deleted == 0
        source = crashed_a
    np.testing.assert_array_equal(_embeddings(copied.slice(0, 2)), _embeddings(source.slice(0, 2)))
    np.testing.assert_array_equal(_embeddings(copied.slice(2, 1)), _embeddings(crashed_a.slice(2, 1)))  # d2: first copy


# ------------------------------------------------------------------ with Ray
def _assert_same_vectors(version_dir, reference_dir):
    a = pq.read_table(version_dir / "vectors").sort_by("id")
    b = pq.read_table(reference_dir / "vectors").sort_by("id")
    assert a.column("id").to_pylist() == b.column("id").to_pylist()
    assert a.column("content_hash").to_pylist() == b.column("content_hash").to_pylist()
    np.testing.assert_allclose(_embeddings(a), _embeddings(b), atol=1e-5)


def test_a_partly_written_crashed_run_is_salvaged(ray_session, tiny_encoder_dir, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n=24, files=2)
    reference = run_embed(small_config(corpus, tmp_path / "reference", tiny_encoder_dir))
    # what a kill during the write leaves: the run record, one whole vectors file, one cut short
    layout = OutputLayout(tmp_path / "out")
    crashed, crashed_dir = layout.new_version()
    shutil.copy(reference.version_dir / "run.json", crashed_dir / "run.json")
    written = pq.read_table(reference.version_dir / "vectors")
    (crashed_dir / "vectors").mkdir()
    pq.write_table(written.slice(0, 10), crashed_dir / "vectors" / "a.parquet")
    pq.write_table(written.slice(10), crashed_dir / "vectors" / "b.parquet")
    cut = crashed_dir / "vectors" / "b.parquet"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])

    result = run_embed(small_config(corpus, tmp_path / "out", tiny_encoder_dir))
    c = result.counts
    assert (c["rows_salvaged"], c["rows_reused"], c["rows_embedded"]) == (10, 10, 14)
    assert c["rows_read"] == c["rows_embedded"] + c["rows_reused"] + c["rows_quarantined"]
    assert result.manifest["salvage"]["from_versions"] == [crashed]
    assert len(result.manifest["salvage"]["skipped_files"]) == 1
    assert layout.versions() == [result.version]  # the crashed folder is pruned once the new one is published
    _assert_same_vectors(result.version_dir, reference.version_dir)


@pytest.mark.slow
def test_driver_killed_mid_run_then_rerun_salvages_and_equals_uninterrupted(ray_session, tiny_encoder_dir, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n=24, files=2)
    output = tmp_path / "out"
    killed = _job(output, corpus, tiny_encoder_dir, ray_session, L2V_FAULT="after_vectors:kill")
    assert killed.returncode == -9, killed.stderr[-2000:]
    layout = OutputLayout(output)
    assert layout.current() is None and (output / ".lock").exists()
    [half] = layout.versions()
    assert not layout.is_complete(half) and any((layout.version_dir(half) / "vectors").glob("*.parquet"))

    result = run_embed(small_config(corpus, output, tiny_encoder_dir))
    c = result.counts
    assert (c["rows_salvaged"], c["rows_embedded"]) == (24, 0)  # nothing the killed run finished is embedded again
    assert result.manifest["salvage"]["from_versions"] == [half]
    assert layout.current() == result.version and layout.versions() == [result.version]
    vectors = pq.read_table(result.version_dir / "vectors").sort_by("id")
    ids = vectors.column("id").to_pylist()
    assert ids == sorted(f"doc{i}" for i in range(24))
    np.testing.assert_allclose(_embeddings(vectors), _expected(tiny_encoder_dir, ids, 24), atol=1e-5)


@pytest.mark.slow
def test_embed_actor_killed_mid_run_is_restarted_with_exact_counts(ray_session, tiny_encoder_dir, tmp_path,
                                                                   monkeypatch, caplog):
    corpus = write_corpus(tmp_path / "corpus", n=24, files=2)
    monkeypatch.setenv("L2V_FAULT", "embed_actor:kill")  # SIGKILL on the actor's 2nd batch, once per run
    with caplog.at_level(logging.WARNING, logger="pipelines.embed.run"):
        result = run_embed(small_config(corpus, tmp_path / "out", tiny_encoder_dir, batch_size=4))
    assert result.counts["rows_embedded"] == result.counts["rows_read"] == 24
    vectors = pq.read_table(result.version_dir / "vectors").sort_by("id")
    ids = vectors.column("id").to_pylist()
    assert ids == sorted(f"doc{i}" for i in range(24))  # every id, none twice
    assert result.manifest["throughput"]["actor_starts"] == 2  # the pool's one actor, then its restart
    assert "Ray restarted lost actors" in caplog.text
    np.testing.assert_allclose(_embeddings(vectors), _expected(tiny_encoder_dir, ids, 24), atol=1e-5)


HOLD_LOCK = """
import sys, time
from pipelines.embed.layout import OutputLayout
with OutputLayout(sys.argv[1]).lock():
    print("locked", flush=True)
    time.sleep(300)
"""


@pytest.mark.slow
def test_second_run_is_refused_while_the_lock_is_held_and_takes_over_a_stale_one(ray_session, tiny_encoder_dir,
                                                                                 tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n=8, files=1)
    output = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(output)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
        refused = _job(output, corpus, tiny_encoder_dir, ray_session)
        assert refused.returncode == 3, refused.stderr[-2000:]
        assert f"is being written by pid {holder.pid}" in refused.stderr
    finally:
        holder.kill()  # dies holding the lock: it is stale now
        holder.wait()
    assert (output / ".lock").exists() and OutputLayout(output).versions() == []

    done = _job(output, corpus, tiny_encoder_dir, ray_session)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "removing a stale lock" in done.stderr
    assert OutputLayout(output).current() is not None and not (output / ".lock").exists()
