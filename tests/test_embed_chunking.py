"""Long documents split into passages (--chunk-tokens) on local Ray with the tiny encoder: every
passage embedded and indexed with its document, place and span; nothing truncated; the nightly
re-index decides per document (an unchanged one reuses all its passages, a changed one re-embeds
them all, a deleted one loses them all); the diff never reuses half a document."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from embed_helpers import TOPICS, small_config
from pydantic import ValidationError

from pipelines.embed import EmbedConfig, run_embed
from pipelines.embed.plan_tasks import ROW_BITS, STORED_SCHEMA, diff_against_stored

CHUNK_TOKENS, OVERLAP = 48, 8


def long_text(i: int, paragraphs: int = 4) -> str:
    """A few paragraphs of sentences: several windows of CHUNK_TOKENS tokens."""
    parts = []
    for p in range(paragraphs):
        sentences = [f"Item {i}.{p}.{s} is about {TOPICS[(i + p + s) % len(TOPICS)]} and more words here."
                     for s in range(3)]
        parts.append(" ".join(sentences))
    return "\n\n".join(parts)


def write_docs(folder, texts: dict):
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": list(texts), "text": list(texts.values())}), folder / "part-0.parquet")


def vectors(result) -> pa.Table:
    return pq.read_table(result.version_dir / "vectors").sort_by([("doc_id", "ascending"), ("chunk", "ascending")])


@pytest.fixture(scope="module")
def first(ray_session, tiny_encoder_dir, tmp_path_factory):
    corpus = tmp_path_factory.mktemp("long_corpus")
    texts = {f"doc{i}": long_text(i) for i in range(6)}
    texts["short"] = "One short note on tulips."
    write_docs(corpus, texts)
    cfg = small_config(corpus, tmp_path_factory.mktemp("out"), tiny_encoder_dir, incremental=True, index="ivf",
                       keep_versions=5, chunk_tokens=CHUNK_TOKENS, chunk_overlap=OVERLAP)
    return cfg, corpus, texts, run_embed(cfg)


def test_every_passage_is_embedded_with_its_document_place_and_span(first):
    _, _, texts, result = first
    table = vectors(result)
    c = result.counts
    assert c["rows_read"] == c["rows_embedded"] == len(texts) and c["rows_quarantined"] == 0
    assert c["passages_embedded"] == table.num_rows > len(texts) and c["passages_reused"] == 0
    assert c["rows_truncated"] == 0 and not any(table.column("truncated").to_pylist())
    assert result.manifest["chunking"] == {"chunk_tokens": CHUNK_TOKENS, "chunk_overlap": OVERLAP}
    assert max(table.column("n_tokens").to_pylist()) <= CHUNK_TOKENS
    rows = table.to_pylist()
    for doc_id, text in texts.items():
        passages = [r for r in rows if r["doc_id"] == doc_id]
        assert [p["chunk"] for p in passages] == list(range(len(passages)))
        assert {p["chunks"] for p in passages} == {len(passages)}
        assert all(p["id"] == f"{doc_id}#{p['chunk']}" for p in passages)
        assert all(p["text"] == text[p["char_start"]:p["char_end"]] for p in passages)
        covered = np.zeros(len(text), bool)
        for p in passages:
            covered[p["char_start"]:p["char_end"]] = True
        uncovered = [i for i, ch in enumerate(text) if not ch.isspace() and not covered[i]]
        assert not uncovered, f"{doc_id}: characters {uncovered[:5]} are in no passage"
    assert len([r for r in rows if r["doc_id"] == "short"]) == 1
    id_map = pq.read_table(result.version_dir / result.manifest["index"]["id_map"])
    assert sorted(id_map.column("id").to_pylist()) == sorted(table.column("id").to_pylist())


def test_nightly_reindex_decides_per_document(first):
    cfg, corpus, texts, before = first
    old = vectors(before)
    changed = dict(texts)
    changed["doc1"] = long_text(41, paragraphs=2)
    del changed["doc2"]
    changed["doc9"] = long_text(9, paragraphs=3)
    write_docs(corpus, changed)
    after = run_embed(cfg)
    new = vectors(after)
    c = after.counts
    assert (c["rows_embedded"], c["rows_reused"], c["rows_deleted"]) == (2, 5, 1)
    unchanged = [d for d in texts if d not in ("doc1", "doc2")]
    kept_passages = old.filter(pa.compute.is_in(old.column("doc_id"), pa.array(unchanged)))
    assert c["passages_reused"] == kept_passages.num_rows
    assert c["passages_embedded"] == new.num_rows - kept_passages.num_rows
    # unchanged documents: the very same vectors; the deleted one: gone, every passage
    same = new.filter(pa.compute.is_in(new.column("doc_id"), pa.array(unchanged)))
    assert same.column("id").to_pylist() == kept_passages.column("id").to_pylist()
    assert same.column("embedding").to_pylist() == kept_passages.column("embedding").to_pylist()
    assert "doc2" not in set(new.column("doc_id").to_pylist())
    id_map_ids = set(pq.read_table(after.version_dir / after.manifest["index"]["id_map"]).column("id").to_pylist())
    assert id_map_ids == set(new.column("id").to_pylist())
    assert not any(i.startswith("doc2#") for i in id_map_ids)
    doc1 = new.filter(pa.compute.equal(new.column("doc_id"), "doc1")).to_pylist()
    assert doc1 and all(p["text"] == changed["doc1"][p["char_start"]:p["char_end"]] for p in doc1)


def _stored(rows):
    """STORED_SCHEMA rows from (doc, hash, source, row, group, chunk, chunks)."""
    return pa.table({
        "id": [r[0] for r in rows], "content_hash": [r[1] for r in rows],
        "rank": pa.array([(r[2] << ROW_BITS) + r[3] for r in rows], pa.int64()),
        "vector_id": [f"{r[0]}#{r[5]}" for r in rows], "group": pa.array([r[4] for r in rows], pa.int32()),
        "chunk": pa.array([r[5] for r in rows], pa.int32()), "chunks": pa.array([r[6] for r in rows], pa.int32()),
    }, schema=STORED_SCHEMA)


def test_the_diff_never_reuses_half_a_document():
    kept = pa.table({"id": ["a", "b", "c"], "content_hash": ["ha", "hb", "hc"],
                     "file_index": pa.array([0, 0, 0], pa.int32()), "row": pa.array([0, 1, 2], pa.int64())})
    stored = _stored([
        ("b", "hb", 0, 0, 0, 0, 2), ("b", "hb", 0, 1, 0, 1, 2),  # published: b whole
        ("a", "ha", 0, 2, 0, 0, 2),  # published: a's first passage only (cannot happen, but must not count)
        ("a", "ha", 1, 0, 1, 0, 2),  # interrupted run 1: a's first passage only (killed mid-document)
        ("a", "ha", 2, 5, 2, 1, 2), ("a", "ha", 2, 4, 2, 0, 2),  # interrupted run 2: a whole
        ("c", "old", 0, 3, 0, 0, 1),  # published: c with another text -> embedded again
        ("gone", "hg", 0, 4, 0, 0, 1),  # published, no longer in the input -> deleted
    ])
    diff = diff_against_stored(kept, stored, published_sources=1)
    reused = diff.reused.to_pylist()
    assert [(r["source"], r["row"], r["id"]) for r in reused] == [(0, 0, "b#0"), (0, 1, "b#1"), (2, 4, "a#0"),
                                                                  (2, 5, "a#1")]
    assert diff.to_embed.column("id").to_pylist() == ["c"]
    assert (diff.reused_docs, diff.reused_docs_published, diff.deleted) == (2, 1, 1)


def test_chunk_settings_are_checked():
    with pytest.raises(ValidationError, match="chunk_overlap needs chunk_tokens"):
        EmbedConfig(input=["x"], output="y", chunk_overlap=8)
    with pytest.raises(ValidationError, match="under half of chunk_tokens"):
        EmbedConfig(input=["x"], output="y", chunk_tokens=64, chunk_overlap=32)


def test_a_window_larger_than_the_encoder_is_refused_before_embedding(first, tiny_encoder_dir, tmp_path):
    _, corpus, _, _ = first
    cfg = small_config(corpus, tmp_path / "out", tiny_encoder_dir, chunk_tokens=4096)
    with pytest.raises(ValueError, match="--chunk-tokens 4096.*max_length"):
        run_embed(cfg)
    assert not any((tmp_path / "out" / "versions").glob("*/manifest.json"))


def test_the_command_line_sets_the_chunk_settings():
    from jobs.embed_corpus import config_from_args, parse_args

    cfg = config_from_args(parse_args(["--input", "x", "--output", "y", "--chunk-tokens", "64",
                                       "--chunk-overlap", "8"]))
    assert cfg.chunking == {"chunk_tokens": 64, "chunk_overlap": 8}
    assert config_from_args(parse_args(["--input", "x", "--output", "y"])).chunking is None
