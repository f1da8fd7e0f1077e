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
    built = build_index(version, folder, 32, requested=kind, recall_queries=50, recall_target=0.95)
    info = built.info
    saved = json.loads((version / "index_info.json").read_text())
    assert saved["count"] == len(x) and saved["dim"] == 32 and saved["metric"] == "inner_product"
    assert saved["kind"] == kind and saved["factory"] and saved["recall_queries"] == 50
    assert info["recall_at_10"] >= min_recall, info["tuning"]
    assert built.tokens == 5 * len(x) and built.count == len(x)
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


# ------------------------------------------------------------------ in-place update (index_update.py)
def _write(folder, name, ids, x):
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "id": ids, "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1]),
        "n_tokens": pa.array(np.full(len(ids), 5), pa.int32()), "truncated": pa.array(np.zeros(len(ids), bool)),
    }), folder / name, row_group_size=100)


def _unit(rng, n, dim=32):
    x = rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _searcher(version):
    """(search(queries, k) -> corpus ids, the id map) of a written version."""
    info = json.loads((version / "index_info.json").read_text())
    index = faiss.read_index(str(version / "index.faiss"))
    for name, value in info["search_params"].items():
        faiss.ParameterSpace().set_index_parameter(index, name, value)
    id_map = pq.read_table(version / "id_map.parquet")
    by_faiss = dict(zip(id_map.column("faiss_id").to_pylist(), id_map.column("id").to_pylist()))

    def search(queries, k):
        _, labels = index.search(queries, k)
        return [[by_faiss[int(label)] for label in row if label >= 0] for row in labels]

    return search, id_map, info


@pytest.fixture
def nightly_change(tmp_path):
    """A previous IVF version of 1200 vectors, and a new version where 30 ids are deleted, 30
    changed and 30 added (5% of the index): the kept rows sit in a reused file in another order."""
    folder, x = _vectors_dir(tmp_path)
    previous = folder.parent
    build_index(previous, folder, 32, requested="ivf", recall_queries=50)
    rng = np.random.default_rng(1)
    deleted, changed = [f"id{i}" for i in range(30)], [f"id{i}" for i in range(30, 60)]
    kept_rows = np.arange(60, 1200)[::-1]  # reversed: the id map must follow the rows to their new place
    new_ids = changed + [f"new{i}" for i in range(30)]
    new_x = _unit(rng, 60)
    current = tmp_path / "current"
    _write(current / "vectors", "part-0.parquet", new_ids, new_x)
    _write(current / "vectors", "reused-00000.parquet", [f"id{i}" for i in kept_rows], x[kept_rows])
    vectors = {**{f"id{i}": x[i] for i in kept_rows}, **dict(zip(new_ids, new_x))}
    return previous, current, pa.array([f"id{i}" for i in kept_rows]), vectors, deleted, changed, x


def test_small_change_updates_the_ivf_index_in_place(nightly_change, tmp_path):
    from pipelines.embed.index_update import plan_index_update, update_index

    previous, current, kept, vectors, deleted, changed, old_x = nightly_change
    update, why = plan_index_update(previous, len(kept), len(vectors), 32, "ivf", 4 << 30)
    assert update, why
    info = update_index(current, current / "vectors", previous, kept, 32, recall_queries=50, built_because=why).info
    assert (info["built_by"], info["removed"], info["added"], info["count"]) == ("update", 60, 60, len(vectors))
    assert info["since_training"] == {"trained_count": 1200, "removed": 60, "added": 60}
    search, id_map, saved = _searcher(current)
    assert saved["built_by"] == "update" and saved["recall_at_10"] >= 0.95, saved["tuning"]

    # every faiss id leads to its row of the NEW version's files
    assert id_map.num_rows == len(vectors) and len(set(id_map.column("faiss_id").to_pylist())) == len(vectors)
    files = {name: pq.read_table(current / name) for name in set(id_map.column("file").to_pylist())}
    for row in id_map.to_pylist()[::97]:
        assert files[row["file"]].column("id")[row["row"]].as_py() == row["id"]
    # kept vectors keep their faiss id (their position in the previous build), the others get fresh ones
    faiss_of = dict(zip(id_map.column("id").to_pylist(), id_map.column("faiss_id").to_pylist()))
    assert all(faiss_of[f"id{i}"] == i for i in range(60, 1200))
    assert sorted(faiss_of[i] for i in vectors if faiss_of[i] >= 1200) == list(range(1200, 1260))

    ids = list(vectors)
    matrix = np.stack([vectors[i] for i in ids])
    # deleted documents are never returned, whatever the query; changed ones are found by their new vector
    assert not set(deleted) & {i for row in search(old_x[:60], 50) for i in row}
    assert [row[0] for row in search(matrix[[ids.index(c) for c in changed]], 1)] == changed

    # agrees with exact search over the same vectors, and with a fresh build over them
    queries = matrix[np.random.default_rng(2).choice(len(ids), 200, replace=False)]
    exact = np.argsort(-(queries @ matrix.T), axis=1)[:, :10]
    found = search(queries, 10)
    recall = np.mean([len(set(f) & {ids[j] for j in e}) / 10 for f, e in zip(found, exact)])
    assert recall >= saved["recall_at_10"] - 0.02, (recall, saved["recall_at_10"])
    fresh = tmp_path / "fresh"
    (fresh / "vectors").mkdir(parents=True)
    for path in (current / "vectors").iterdir():
        (fresh / "vectors" / path.name).write_bytes(path.read_bytes())
    build_index(fresh, fresh / "vectors", 32, requested="ivf", recall_queries=50)
    fresh_found = _searcher(fresh)[0](queries, 10)
    assert [f[0] for f in found] == [f[0] for f in fresh_found]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, fresh_found)]) >= 0.9


def test_update_or_rebuild_decision(nightly_change, tmp_path):
    from pipelines.embed.index_update import plan_index_update, update_index

    previous, current, kept, vectors, *_ = nightly_change
    assert plan_index_update(None, 0, 100, 32, "ivf", 4 << 30)[0] is False
    assert "retraining" in plan_index_update(previous, 1000, 1200, 32, "ivf", 4 << 30)[1]  # 200 removed: 17%
    assert "want Flat" in plan_index_update(previous, len(kept), len(vectors), 32, "auto", 4 << 30)[1]
    for kind, why in (("flat", "costs what an update would"), ("hnsw", "cannot remove ids")):
        folder, _ = _vectors_dir(tmp_path / kind, n=300)
        build_index(folder.parent, folder, 32, requested=kind, recall_queries=10)
        update, reason = plan_index_update(folder.parent, 290, 300, 32, kind, 4 << 30)
        assert not update and why in reason
    # successive nightly updates add up: 60 + 70 removed since training is over 10% of 1200
    update_index(current, current / "vectors", previous, kept, 32, recall_queries=20)
    update, reason = plan_index_update(current, len(vectors) - 70, len(vectors), 32, "ivf", 4 << 30)
    assert not update and "130 removed" in reason
