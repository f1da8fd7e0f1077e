"""The whole run on local Ray with the tiny encoder: clean corpus, re-run, crash before publish."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from embed_helpers import clean_texts, small_config, write_corpus

from pipelines.embed import OutputLayout, run_embed
from pipelines.faults import InjectedFault
from pipelines.search import CorpusIndex


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n=40, files=2)


@pytest.fixture(scope="module")
def first_run(ray_session, corpus, tiny_encoder_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("out")
    cfg = small_config(corpus, output, tiny_encoder_dir, keep_versions=2)
    return cfg, run_embed(cfg)


def test_clean_corpus_is_embedded_indexed_and_published(first_run, tiny_encoder_dir):
    cfg, result = first_run
    layout = OutputLayout(cfg.output)
    assert layout.current() == result.version
    counts = result.counts
    assert counts["rows_read"] == counts["rows_embedded"] == 40 and counts["rows_quarantined"] == 0
    vectors = pq.read_table(result.version_dir / "vectors")
    assert vectors.schema.field("embedding").type == pa.list_(pa.float32(), 64)  # plain Arrow, not a tensor extension
    assert sorted(vectors.column("id").to_pylist()) == sorted(f"doc{i}" for i in range(40))
    norms = np.linalg.norm(np.stack(vectors.column("embedding").to_numpy(zero_copy_only=False)), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    info = json.loads((result.version_dir / "index_info.json").read_text())
    assert info["factory"] == "Flat" and info["count"] == 40 and info["recall_at_10"] == 1.0
    manifest = layout.read_manifest()
    assert manifest["encoder"]["identity"]["dim"] == 64 and manifest["vector_identity"]["encoder"]["weights_sha256"]
    assert manifest["throughput"]["tokens"] == vectors.column("n_tokens").to_numpy().sum() > 0
    assert not (result.version_dir / "_stats").exists()


def test_rerun_publishes_a_new_version_without_duplicates(first_run):
    cfg, first = first_run
    second = run_embed(cfg)
    layout = OutputLayout(cfg.output)
    assert second.version != first.version and layout.current() == second.version
    assert second.manifest["previous_version"] == first.version
    ids = pq.read_table(second.version_dir / "vectors", columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 40
    # the same input and encoder give the same vectors
    a = pq.read_table(first.version_dir / "vectors").sort_by("id")
    b = pq.read_table(second.version_dir / "vectors").sort_by("id")
    np.testing.assert_allclose(np.stack(a.column("embedding").to_numpy(zero_copy_only=False)),
                               np.stack(b.column("embedding").to_numpy(zero_copy_only=False)), atol=1e-5)
    assert a.column("content_hash").to_pylist() == b.column("content_hash").to_pylist()


def test_crash_before_publish_keeps_the_old_version_published(first_run, monkeypatch):
    cfg, _ = first_run
    layout = OutputLayout(cfg.output)
    published = layout.current()
    monkeypatch.setenv("L2V_FAULT", "before_publish")
    with pytest.raises(InjectedFault):
        run_embed(cfg)
    assert layout.current() == published
    crashed = [v for v in layout.versions() if v > published]
    assert len(crashed) == 1  # written in full (manifest too), never published
    assert not (layout.root / ".lock").exists()
    # still searchable
    hits = CorpusIndex.open(cfg.output).search(clean_texts(40)[3], k=1)[0]
    assert hits[0].id == "doc3"
    # pruning (which every run does) removes the unpublished leftover but never CURRENT
    monkeypatch.delenv("L2V_FAULT")
    layout.prune(cfg.keep_versions)
    assert published in layout.versions()


def test_one_large_file_is_spread_over_every_actor(ray_session, tiny_encoder_dir, tmp_path, monkeypatch):
    # Slow batches: the tiny model embeds a batch before the next block is dispatched, so without a
    # backlog one idle actor may take every block, which is correct but proves nothing here.
    monkeypatch.setenv("L2V_FAULT", "embed_actor:slow")
    corpus = write_corpus(tmp_path / "corpus", n=64, files=1)
    cfg = small_config(corpus, tmp_path / "out", tiny_encoder_dir, num_actors=2, actor_cpus=0.5,
                       batch_size=8)
    result = run_embed(cfg)
    assert result.counts["rows_embedded"] == 64
    per_actor = result.manifest["throughput"]["rows_per_actor"]
    assert len(per_actor) == 2 and min(per_actor) > 0 and sum(per_actor) == 64
    # blocks are cut to the batch size, but the vectors files hold several batches each
    assert len(list((result.version_dir / "vectors").glob("*.parquet"))) < 64 // 8


def test_more_actors_than_the_cluster_can_hold_is_refused_up_front(ray_session, tiny_encoder_dir, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n=8, files=1)
    cfg = small_config(corpus, tmp_path / "out", tiny_encoder_dir, num_actors=2)  # 2 x 1 CPU on a 2-CPU Ray
    with pytest.raises(ValueError, match="lower --num-actors or --actor-cpus"):
        run_embed(cfg)
    assert OutputLayout(cfg.output).current() is None
