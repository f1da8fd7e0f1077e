"""The index built on workers (pipelines/embed/index_shards.py): shards merged with merge_from equal a
serial build over the same trained index; a lost shard worker is retried; a failing shard fails the
build without leaving an index behind."""

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
from test_embed_index import _vectors_dir

from pipelines import faults
from pipelines.embed.index_build import (
    append_in_order,
    build_index,
    choose_index,
    sample_rows,
    sample_vectors,
    stream_vectors,
)
from pipelines.embed.index_shards import (
    SHARDS_DIR,
    IndexBuildError,
    ShardRange,
    add_shard,
    build_index_on_workers,
    merge_shards,
    read_layout,
    sample_range,
    train_serialized,
)
from pipelines.embed.layout import vector_files_in


def _search(index, queries, nprobe=4):
    faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
    return index.search(queries, 10)


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_merged_shards_equal_a_serial_build_from_the_same_trained_index(tmp_path, kind):
    folder, x = _vectors_dir(tmp_path, n=1200)  # 3 files of 400 rows, row groups of 100
    version = folder.parent
    spec = choose_index(len(x), 32, kind)
    layout = read_layout(folder)
    # cut inside the second file and inside one of its row groups: shards need not follow the files
    ranges = [ShardRange(0, 0, 650), ShardRange(1, 650, 1200)]
    query_rows, train_rows = sample_rows(len(x), 50, spec.train_size, 0)
    parts = [sample_range(layout, r, 32, query_rows[(query_rows >= r.start) & (query_rows < r.stop)],
                          train_rows[(train_rows >= r.start) & (train_rows < r.stop)]) for r in ranges]
    queries = np.concatenate([q for q, _ in parts])
    expected_queries, expected_train = sample_vectors(vector_files_in(folder), 32, query_rows, train_rows)
    assert np.array_equal(queries, expected_queries)  # the sample a serial build takes
    trained, size = train_serialized(spec, 32, *[t for _, t in parts])
    assert size == len(trained) and np.array_equal(trained, train_serialized(spec, 32, expected_train)[0])

    shard_dir = version / SHARDS_DIR
    shard_dir.mkdir()
    results = [add_shard(trained, spec, layout, r, 32, queries, shard_dir) for r in ranges]
    assert [r.count for r in results] == [650, 550] and all(r.attempts == 1 for r in results)
    info = merge_shards(version, spec, results, queries, 0.95, 0.0, {"steps_s": {}, "workers": 2}).info

    serial_dir = tmp_path / "serial"
    serial_dir.mkdir()
    serial = faiss.deserialize_index(trained)
    exact, _ = stream_vectors(vector_files_in(folder), 32, serial_dir, queries, append_in_order(serial, spec))
    merged = faiss.read_index(str(version / "index.faiss"))
    assert merged.ntotal == serial.ntotal == len(x)
    merged_scores, merged_ids = _search(merged, x[:200])
    serial_scores, serial_ids = _search(serial, x[:200])
    assert np.array_equal(merged_ids, serial_ids) and np.array_equal(merged_scores, serial_scores)
    assert np.array_equal(faiss.serialize_index(merged), faiss.serialize_index(serial))  # same lists, same order

    # faiss ids are the stream positions, and lead to the planned ids, files and rows
    id_map = pq.read_table(version / "id_map.parquet")
    assert id_map.equals(pq.read_table(serial_dir / "id_map.parquet"))
    assert id_map.column("faiss_id").to_pylist() == list(range(len(x)))
    assert id_map.column("id").to_pylist() == [f"id{i}" for i in range(len(x))]
    assert id_map.column("row").to_pylist()[645:655] == list(range(245, 255))
    # the recall check runs on the merged index, against exact top-10s combined over the shards
    assert {frozenset(row) for row in exact[0]} == {frozenset(row) for row in _merged_exact(results, queries)}
    assert info["count"] == len(x) and info["recall_queries"] == 50 and "nprobe" in info["search_params"]
    assert json.loads((version / "index_info.json").read_text())["recall_at_10"] == info["recall_at_10"]


def _merged_exact(results, queries):
    from pipelines.embed.index_build import merge_top_k

    scores, ids = np.full((len(queries), 10), -np.inf, np.float32), np.full((len(queries), 10), -1, np.int64)
    for r in results:
        scores, ids = merge_top_k(scores, ids, r.exact_scores, r.exact_ids, 10)
    return ids


def _copy(folder, target):
    shutil.copytree(folder.parent, target)
    return target


def test_build_on_two_workers_equals_the_serial_build(ray_session, tmp_path):
    folder, _ = _vectors_dir(tmp_path, n=1500)
    sharded = _copy(folder, tmp_path / "sharded")
    serial_built = build_index(folder.parent, folder, 32, requested="ivf", recall_queries=50)
    built = build_index_on_workers(sharded, sharded / "vectors", 32, requested="ivf", recall_queries=50, shards=2)
    serial, info = serial_built.info, built.info
    assert (info["workers"], info["threads_per_worker"], [s["rows"] for s in info["shards"]]) == (2, 1, [750, 750])
    assert set(info["steps_s"]) == {"sample", "train", "add", "merge", "tune_write"}
    assert (info["recall_at_10"], info["search_params"], info["count"]) == (
        serial["recall_at_10"], serial["search_params"], serial["count"])
    assert (built.tokens, built.truncated) == (serial_built.tokens, serial_built.truncated)
    assert np.array_equal(faiss.serialize_index(faiss.read_index(str(sharded / "index.faiss"))),
                          faiss.serialize_index(faiss.read_index(str(folder.parent / "index.faiss"))))
    assert pq.read_table(sharded / "id_map.parquet").equals(pq.read_table(folder.parent / "id_map.parquet"))
    assert not (sharded / SHARDS_DIR).exists()
    # Flat (and HNSW) are never sharded: one task builds them
    flat = build_index_on_workers(_copy(folder, tmp_path / "flat"), folder, 32, requested="flat", shards=2).info
    assert flat["workers"] == 1 and flat["kind"] == "flat"


def test_a_lost_shard_worker_is_retried(ray_session, tmp_path, monkeypatch):
    folder, _ = _vectors_dir(tmp_path, n=1500)
    reference = build_index(folder.parent, folder, 32, requested="ivf", recall_queries=50).info
    version = _copy(folder, tmp_path / "retried")
    monkeypatch.setenv(faults.ENV, f"{faults.INDEX_SHARD}:kill")  # SIGKILL the first shard worker to add a chunk
    info = build_index_on_workers(version, version / "vectors", 32, requested="ivf", recall_queries=50, shards=2).info
    assert sorted(s["attempts"] for s in info["shards"]) == [1, 2]
    assert info["count"] == 1500 and info["recall_at_10"] == reference["recall_at_10"]
    assert pq.read_table(version / "id_map.parquet").equals(pq.read_table(folder.parent / "id_map.parquet"))


def test_a_failing_shard_fails_the_build_and_leaves_no_index(ray_session, tmp_path, monkeypatch):
    folder, _ = _vectors_dir(tmp_path, n=1500)
    version = folder.parent
    monkeypatch.setenv(faults.ENV, faults.INDEX_SHARD)  # raises inside a shard task: not retried
    with pytest.raises(IndexBuildError, match=r"index shard \d .*InjectedFault.*nothing was published"):
        build_index_on_workers(version, folder, 32, requested="ivf", recall_queries=50, shards=2)
    assert sorted(p.name for p in version.iterdir()) == ["vectors"]  # no index, id map, info or shard files


def test_bench_quick_builds_on_one_and_two_workers_at_equal_recall(ray_session, tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_index_build.py"
    spec = importlib.util.spec_from_file_location("bench_index_build", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data, one, two = bench.main(["--quick", "--index", "ivf", "--work", str(tmp_path)])  # ivf: trains in no time
    assert data["vectors"] == one["vectors"] == two["vectors"] == 6000
    assert (one["workers"], one["threads_per_worker"], two["workers"], two["threads_per_worker"]) == (1, 2, 2, 1)
    assert set(two["steps_s"]) == {"sample", "train", "add", "merge", "tune_write"}
    assert one["recall_at_10"] == two["recall_at_10"] > 0.5 and one["search_params"] == two["search_params"]


def test_a_run_indexes_on_shards_and_a_failing_shard_publishes_nothing(ray_session, tiny_encoder_dir, tmp_path,
                                                                      monkeypatch):
    from embed_helpers import small_config, write_corpus

    from pipelines.embed import OutputLayout, index_shards, run_embed
    from pipelines.search import CorpusIndex

    monkeypatch.setattr(index_shards, "MIN_SHARD_ROWS", 10)  # shard even this corpus (the driver decides)
    cfg = small_config(write_corpus(tmp_path / "corpus", n=120), tmp_path / "out", tiny_encoder_dir, index="ivf")
    first = run_embed(cfg)
    info = json.loads((first.version_dir / "index_info.json").read_text())
    assert (info["workers"], info["count"], info["built_by"]) == (2, 120, "rebuild") and info["recall_at_10"] >= 0.95
    id_map = pq.read_table(first.version_dir / "id_map.parquet")
    assert sorted(id_map.column("id").to_pylist()) == sorted(f"doc{i}" for i in range(120))
    assert CorpusIndex.open(cfg.output).search("glaciers", k=3)[0]  # search loads the merged index

    monkeypatch.setenv(faults.ENV, faults.INDEX_SHARD)
    with pytest.raises(IndexBuildError, match="nothing was published"):
        run_embed(cfg)
    assert OutputLayout(cfg.output).current() == first.version
