"""Chunked indexes (one vector per passage): the id map carries doc_id whichever way the index is
built (serial, in shards, updated in place), and search groups passages into documents (best
passage per document, over-fetching until k documents came back) or returns the passages.

Built from hand-made passage vectors (the contract's vectors columns) with the real index code and
real FAISS, no model: the vectors are designed so that the answer is known."""

import json

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.embed.index_build import build_index, choose_index, sample_rows, sample_vectors
from pipelines.embed.layout import vector_files_in
from pipelines.search import CorpusIndex, Hit

DIM = 16


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(x)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _write_passages(folder, name, docs: dict[str, np.ndarray], row_group_size=64):
    """One vectors file of passages: `docs` maps a document id to its passages' vectors. Passage
    i of a document covers characters [10 i, 10 i + 12) of its text (overlapping spans)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(doc, i, len(x)) for doc, x in docs.items() for i in range(len(x))]
    x = np.concatenate(list(docs.values()))
    pq.write_table(pa.table({
        "id": [f"{doc}#{i}" for doc, i, _ in rows],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1]),
        "content_hash": [f"hash-{doc}" for doc, _, _ in rows],
        "n_tokens": pa.array([7] * len(rows), pa.int32()),
        "truncated": pa.array([False] * len(rows)),
        "text": [f"passage {i} of {doc}" for doc, i, _ in rows],
        "doc_id": [doc for doc, _, _ in rows],
        "chunk": pa.array([i for _, i, _ in rows], pa.int32()),
        "chunks": pa.array([n for _, _, n in rows], pa.int32()),
        "char_start": pa.array([10 * i for _, i, _ in rows], pa.int32()),
        "char_end": pa.array([10 * i + 12 for _, i, _ in rows], pa.int32()),
    }), folder / name, row_group_size=row_group_size)


def _random_docs(rng, n_docs, passages, prefix="d"):
    return {f"{prefix}{d}": _unit(rng.normal(size=(passages, DIM))) for d in range(n_docs)}


@pytest.fixture(scope="module")
def designed(tmp_path_factory):
    """A Flat chunked version: 'big' has 40 passages equal to the query Q, 'near' one passage
    close to Q, 30 documents of 3 random passages each; and a CorpusIndex over it."""
    rng = np.random.default_rng(0)
    q = _unit(rng.normal(size=DIM))
    docs = {"big": np.repeat(q, 40, axis=0), "near": _unit(np.concatenate([rng.normal(size=(2, DIM)),
                                                                           q + 0.2 * rng.normal(size=(1, DIM))]))}
    docs |= _random_docs(rng, 30, 3)
    version = tmp_path_factory.mktemp("chunked") / "v1"
    _write_passages(version / "vectors", "part-00000.parquet", dict(list(docs.items())[:12]))
    _write_passages(version / "vectors", "part-00001.parquet", dict(list(docs.items())[12:]))
    build_index(version, version / "vectors", DIM, requested="flat", recall_queries=20)
    return q, docs, version, _open(version)


def _open(version, chunking=True) -> CorpusIndex:
    """A CorpusIndex over a hand-made version (no encoder: search_vectors only)."""
    columns = pq.read_schema(next((version / "vectors").iterdir())).names
    manifest = {"version": version.name, "vectors": {"columns": columns}}
    if chunking:
        manifest["chunking"] = {"chunk_tokens": 64, "chunk_overlap": 0}
    index = faiss.read_index(str(version / "index.faiss"))
    info = json.loads((version / "index_info.json").read_text())
    for name, value in info["search_params"].items():
        faiss.ParameterSpace().set_index_parameter(index, name, value)
    return CorpusIndex(version, manifest, index, pq.read_table(version / "id_map.parquet").sort_by("faiss_id"), None)


def _exact_documents(q, docs, k):
    """(doc, best score, best chunk) of the k best documents by exact max over their passages."""
    best = [(doc, float(np.max(x @ q[0])), int(np.argmax(x @ q[0]))) for doc, x in docs.items()]
    return sorted(best, key=lambda b: -b[1])[:k]


# ------------------------------------------------------------------ the id map
def test_the_id_map_of_passages_has_their_doc_ids(designed):
    _, docs, version, _ = designed
    id_map = pq.read_table(version / "id_map.parquet")
    assert id_map.column_names == ["faiss_id", "id", "file", "row", "doc_id"]
    assert id_map.column("doc_id").to_pylist() == [d for d, x in docs.items() for _ in range(len(x))]
    assert [i.split("#")[0] for i in id_map.column("id").to_pylist()] == id_map.column("doc_id").to_pylist()


def test_sharded_and_updated_indexes_keep_doc_ids(tmp_path):
    from pipelines.embed.index_shards import (
        SHARDS_DIR,
        ShardRange,
        add_shard,
        merge_shards,
        read_layout,
        train_serialized,
    )
    from pipelines.embed.index_update import update_index

    rng = np.random.default_rng(1)
    docs = _random_docs(rng, 300, 4)  # 1200 passages: enough to train an IVF index
    version = tmp_path / "v1"
    names = list(docs)
    _write_passages(version / "vectors", "part-00000.parquet", {d: docs[d] for d in names[:150]})
    _write_passages(version / "vectors", "part-00001.parquet", {d: docs[d] for d in names[150:]})
    serial = build_index(version, version / "vectors", DIM, requested="ivf", recall_queries=20)
    expected = pq.read_table(version / "id_map.parquet")
    assert expected.column("doc_id").to_pylist()[:5] == ["d0"] * 4 + ["d1"]

    # in shards (the workers' functions, without Ray): the merged id map equals the serial one
    sharded = tmp_path / "sharded"
    (sharded / SHARDS_DIR).mkdir(parents=True)
    spec = choose_index(1200, DIM, "ivf")
    layout = read_layout(version / "vectors")
    assert "doc_id" in layout.columns
    query_rows, train_rows = sample_rows(1200, 20, spec.train_size, 0)
    queries, train = sample_vectors(vector_files_in(version / "vectors"), DIM, query_rows, train_rows)
    trained, _ = train_serialized(spec, DIM, train)
    results = [add_shard(trained, spec, layout, r, DIM, queries, sharded / SHARDS_DIR)
               for r in (ShardRange(0, 0, 700), ShardRange(1, 700, 1200))]
    merge_shards(sharded, spec, results, queries, 0.95, 0.0, {"steps_s": {}, "workers": 2})
    assert pq.read_table(sharded / "id_map.parquet").equals(expected)

    # updated in place: document d0 deleted (all 4 passages), d1 changed, the rest kept
    current = tmp_path / "v2"
    changed = _unit(rng.normal(size=(2, DIM)))
    _write_passages(current / "vectors", "part-00000.parquet", {"d1": changed})
    _write_passages(current / "vectors", "reused-00000.parquet", {d: docs[d] for d in names[2:]})
    kept = pa.array([f"{d}#{i}" for d in names[2:] for i in range(4)])
    info = update_index(current, current / "vectors", version, kept, DIM, recall_queries=20).info
    assert info["built_by"] == "update" and info["removed"] == 8 and info["added"] == 2 and serial.count == 1200
    id_map = pq.read_table(current / "id_map.parquet")
    assert id_map.num_rows == 1194 and "d0" not in set(id_map.column("doc_id").to_pylist())
    assert id_map.filter(pa.compute.equal(id_map.column("doc_id"), "d1")).column("id").to_pylist() == ["d1#0", "d1#1"]


def test_chunked_and_unchunked_vectors_cannot_share_an_index(designed, tmp_path):
    from test_embed_index import _write

    _, docs, version, _ = designed
    mixed = tmp_path / "mixed"
    _write_passages(mixed / "vectors", "part-00000.parquet", {"a": docs["near"]})
    _write(mixed / "vectors", "reused-00000.parquet", ["x", "y"], _unit(np.ones((2, DIM))))
    with pytest.raises(ValueError, match="some vectors files .* doc_id column and some do not"):
        build_index(mixed, mixed / "vectors", DIM, requested="flat")


# ------------------------------------------------------------------ grouped search
def test_grouped_by_document_is_the_best_passage_of_each_of_k_documents(designed):
    q, docs, _, index = designed
    hits = index.search_vectors(q, k=5)[0]  # chunked: group_by=None means "doc"
    assert hits == index.search_vectors(q, k=5, group_by="doc")[0]
    expected = _exact_documents(q, docs, 5)
    # 'big' fills the first 40 passages: the k * 8 = 40 fetched first held one document, so more came
    assert [h.id for h in hits] == [doc for doc, _, _ in expected] and hits[0].id == "big" and hits[1].id == "near"
    assert [h.score for h in hits] == pytest.approx([s for _, s, _ in expected], abs=1e-5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5] and len({h.doc_id for h in hits}) == 5
    near = hits[1]
    assert (near.doc_id, near.passage_id, near.chunk, near.char_start, near.char_end, near.text) == (
        "near", "near#2", 2, 20, 32, "passage 2 of near")
    for hit, (_, _, chunk) in zip(hits[2:], expected[2:]):
        assert hit.passage_id == f"{hit.doc_id}#{chunk}" and hit.chunk == chunk and hit.text.startswith("passage ")
    assert set(near.to_dict()) == {"rank", "id", "score", "text", "doc_id", "passage_id", "chunk", "char_start",
                                   "char_end"}


def test_grouped_by_passage_returns_the_passages(designed):
    q, docs, _, index = designed
    hits = index.search_vectors(q, k=45, group_by="passage")[0]
    assert len(hits) == 45 and {h.doc_id for h in hits[:40]} == {"big"} and hits[40].id == "near#2"
    assert all(h.id == h.passage_id == f"{h.doc_id}#{h.chunk}" for h in hits)
    assert hits[0].score == pytest.approx(1.0, abs=1e-5) and hits[0].char_end == hits[0].char_start + 12


def test_fewer_documents_than_k_and_several_queries(designed):
    q, docs, _, index = designed
    other = docs["d7"][1:2]
    every = index.search_vectors(np.concatenate([q, other]), k=100, with_text=False)
    assert [len(hits) for hits in every] == [len(docs), len(docs)]  # every document once, none twice
    assert every[1][0].passage_id == "d7#1" and every[1][0].text is None and every[1][0].chunk == 1
    with pytest.raises(ValueError, match="group_by must be 'doc', 'passage' or None"):
        index.search_vectors(q, k=3, group_by="document")


def test_an_unchunked_index_answers_as_before_whatever_group_by(tmp_path):
    from test_embed_index import _vectors_dir

    folder, x = _vectors_dir(tmp_path, n=300, dim=DIM, files=1)
    build_index(folder.parent, folder, DIM, requested="flat", recall_queries=10)
    index = _open(folder.parent, chunking=False)
    assert not index.chunked and index.grouping("doc") is None
    plain = index.search_vectors(x[:2], k=3)
    assert plain == index.search_vectors(x[:2], k=3, group_by="doc") == index.search_vectors(x[:2], k=3,
                                                                                             group_by="passage")
    assert plain[0][0].id == "id0" and plain[0][0].to_dict().keys() == {"rank", "id", "score", "text"}
    assert Hit(1, "a", 0.5).to_dict() == {"rank": 1, "id": "a", "score": 0.5, "text": None}


# ------------------------------------------------------------------ end to end: run_embed --chunk-tokens, then search
def test_chunked_embed_then_grouped_search_and_the_cli(chunked_output, capsys):
    from jobs import search as job
    from pipelines.embed import OutputLayout

    output, texts = chunked_output
    version = OutputLayout(output).current_dir()
    vectors = pq.read_table(next((version / "vectors").glob("*.parquet")))
    assert pq.read_table(version / "id_map.parquet").column_names[-1] == "doc_id"
    passages = [row for row in vectors.to_pylist() if row["chunks"] > 2]
    assert passages, "the documents were not split: lower chunk_tokens in the chunked_output fixture"
    target = passages[len(passages) // 2]  # a passage from inside a document
    doc, chunk = target["doc_id"], target["chunk"]
    assert target["text"] == texts[doc][target["char_start"]:target["char_end"]]

    index = CorpusIndex.open(output)
    assert index.chunked and index.grouping() == "doc"
    hits = index.search(target["text"], k=5)[0]
    assert len(hits) == 5 and len({h.id for h in hits}) == 5 and {h.id for h in hits} <= set(texts)
    best = hits[0]
    assert (best.id, best.doc_id, best.passage_id, best.chunk) == (doc, doc, f"{doc}#{chunk}", chunk)
    assert (best.char_start, best.char_end, best.text) == (target["char_start"], target["char_end"], target["text"])
    assert best.score == pytest.approx(1.0, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)

    assert job.main(["--index", str(output), "--query", target["text"], "--k", "3", "--json"]) == 0
    as_docs = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert as_docs["group_by"] == "doc" and [h["id"] for h in as_docs["hits"]] == [h.id for h in hits[:3]]
    assert job.main(["--index", str(output), "--query", target["text"], "--k", "12", "--json",
                     "--group-by", "passage"]) == 0
    as_passages = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert as_passages["group_by"] == "passage" and len(as_passages["hits"]) == 12
    assert as_passages["hits"][0]["id"] == f"{doc}#{chunk}" == as_passages["hits"][0]["passage_id"]
    assert len({h["doc_id"] for h in as_passages["hits"]}) < 12  # passages of one document come back apart
    assert job.main(["--index", str(output), "--query", target["text"], "--k", "1"]) == 0
    assert f"{doc}  [passage {chunk}, chars {target['char_start']}-{target['char_end']}]" in capsys.readouterr().out
