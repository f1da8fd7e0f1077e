"""FAISS index choice and streaming build on random unit vectors (no model, no Ray)."""

import json

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.embed.index_build import FLAT_MAX_ROWS, build_index, choose_index, recall_at_k


def _vectors_dir(tmp_path, n=1200, dim=32, files=3, seed=0):
    """Clustered unit vectors (like real embeddings) in `files` parquet files."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, dim))
    x = centers[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    folder = tmp_path / "version" / "vectors"
    folder.mkdir(parents=True)
    for f, rows in enumerate(np.array_split(np.arange(n), files)):
        pq.write_table(pa.table({
            "id": [f"id{i}" for i in rows],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x[rows].reshape(-1)), dim),
            "n_tokens": pa.array(np.full(len(rows), 5), pa.int32()),
            "truncated": pa.array(np.zeros(len(rows), bool)),
        }), folder / f"part-{f}.parquet", row_group_size=100)
    return folder, x


def test_auto_choice_follows_size_and_budget():
    assert choose_index(1000, 64).kind == "flat"
    assert choose_index(FLAT_MAX_ROWS + 1, 64, memory_budget=4 << 30).kind == "ivf"
    big = choose_index(10_000_000, 1024, memory_budget=8 << 30)
    assert big.kind == "ivfpq" and big.params["pq_m"] <= 512 and 1024 % big.params["pq_m"] == 0
    assert big.memory_bytes <= 8 << 30
    with pytest.raises(ValueError, match="raise the budget"):
        choose_index(10_000_000, 1024, memory_budget=1 << 20)
    with pytest.raises(ValueError, match="auto, flat, ivf, ivfpq, hnsw"):
        choose_index(10, 8, "annoy")
    nlist = choose_index(1_000_000, 64, "ivf").params["nlist"]
    assert 4 * 1000 * 0.9 <= nlist <= 16 * 1000


@pytest.mark.parametrize("kind,min_recall", [("flat", 1.0), ("ivf", 0.95), ("hnsw", 0.95), ("ivfpq", 0.3)])
def test_build_streams_chunks_and_measures_recall(tmp_path, kind, min_recall):
    folder, x = _vectors_dir(tmp_path)
    version = folder.parent
    info = build_index(version, folder, 32, requested=kind, recall_queries=50, recall_target=0.95)
    saved = json.loads((version / "index_info.json").read_text())
    assert saved["count"] == len(x) and saved["dim"] == 32 and saved["metric"] == "inner_product"
    assert saved["kind"] == kind and saved["factory"] and saved["recall_queries"] == 50
    assert info["recall_at_10"] >= min_recall, info["tuning"]
    assert info["tokens"] == 5 * len(x)
    index = faiss.read_index(str(version / "index.faiss"))
    id_map = pq.read_table(version / "id_map.parquet")
    assert id_map.num_rows == len(x) and id_map.column("faiss_id").to_pylist() == list(range(len(x)))
    # each vector finds itself through the id map
    if kind != "ivfpq":
        for name, value in saved["search_params"].items():
            faiss.ParameterSpace().set_index_parameter(index, name, value)
        _, labels = index.search(x[:20], 1)
        assert [id_map.column("id")[int(i)].as_py() for i in labels[:, 0]] == [f"id{i}" for i in range(20)]


def test_recall_counts_ties_as_hits():
    exact = np.array([[1, 2]])
    assert recall_at_k(np.array([[1, 3]]), exact) == 0.5
    assert recall_at_k(np.array([[1, 3]]), exact, np.array([[1.0, 0.9]]), np.array([[1.0, 0.9]])) == 1.0
