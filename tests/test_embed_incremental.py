"""--incremental on local Ray: only added/changed documents are embedded, deleted ones vanish,
the same input twice embeds nothing, a different encoder re-embeds everything. The index is IVF
(one list at this size), so a small change updates the previous index in place."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from embed_helpers import clean_texts, small_config

from pipelines.embed import OutputLayout, run_embed
from pipelines.search import CorpusIndex

N = 20


def _write(folder, texts: dict):
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": list(texts), "text": list(texts.values())}), folder / "part-0.parquet")


def _vectors(version_dir):
    table = pq.read_table(version_dir / "vectors")
    return dict(zip(table.column("id").to_pylist(), table.column("embedding").to_numpy(zero_copy_only=False)))


@pytest.fixture(scope="module")
def base(ray_session, tiny_encoder_dir, tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus")
    texts = {f"doc{i}": t for i, t in enumerate(clean_texts(N))}
    _write(corpus, texts)
    cfg = small_config(corpus, tmp_path_factory.mktemp("out"), tiny_encoder_dir, incremental=True, keep_versions=5,
                       index="ivf")
    first = run_embed(cfg)
    return cfg, corpus, texts, first


def test_first_incremental_run_embeds_everything(base):
    _, _, _, first = base
    assert first.counts["rows_embedded"] == N and first.counts["rows_reused"] == 0
    assert "no published version" in first.manifest["incremental"]["decision"]
    assert first.manifest["index"]["built_by"] == "rebuild"


def test_same_input_twice_embeds_nothing(base):
    cfg, _, _, _ = base
    again = run_embed(cfg)
    assert again.published is False
    assert OutputLayout(cfg.output).current() == again.version
    c = again.counts  # this run's, not the published version's
    assert c["rows_embedded"] == 0 and c["rows_read"] == c["rows_reused"] + c["rows_quarantined"] > 0


def test_add_change_delete_embeds_only_what_changed(base):
    cfg, corpus, texts, first = base
    changed = dict(texts)
    changed["doc3"] = "A completely new text about lighthouses and fog."
    del changed["doc5"]
    changed["doc99"] = "A brand new document on volcanoes."
    _write(corpus, changed)
    try:
        second = run_embed(cfg)
    finally:
        _write(corpus, texts)
    c = second.counts
    assert (c["rows_embedded"], c["rows_reused"], c["rows_deleted"]) == (2, N - 2, 1)
    assert c["rows_read"] == c["rows_embedded"] + c["rows_reused"] + c["rows_quarantined"]
    before, after = _vectors(first.version_dir), _vectors(second.version_dir)
    assert sorted(after) == sorted(changed)
    for doc_id in set(before) & set(after) - {"doc3"}:
        np.testing.assert_array_equal(before[doc_id], after[doc_id])
    index = CorpusIndex.open(cfg.output)
    assert index.search(changed["doc3"], k=1)[0][0].id == "doc3"
    assert all(h.id != "doc5" for h in index.search(texts["doc5"], k=N)[0])
    # 2 of 20 vectors removed and 2 added: the previous IVF index was updated, not rebuilt, and its
    # id map now leads to this version's files (the texts come back through it)
    assert second.manifest["index"]["built_by"] == "update"
    hits = index.search([changed["doc3"], texts["doc7"]], k=1)
    assert [(h[0].id, h[0].text) for h in hits] == [("doc3", changed["doc3"]), ("doc7", texts["doc7"])]


def test_a_different_encoder_re_embeds_everything(base, tmp_path):
    from l2v_core.testing import save_tiny_encoder

    cfg, _, _, _ = base
    other = save_tiny_encoder(tmp_path / "other_encoder", seed=1)
    result = run_embed(cfg.model_copy(update={"model": str(other)}))
    assert result.counts["rows_reused"] == 0 and result.counts["rows_embedded"] == N
    assert "different encoder" in result.manifest["incremental"]["decision"]
    assert result.manifest["index"]["built_by"] == "rebuild"


def test_another_dtype_re_embeds_everything(ray_session, tiny_encoder_dir, tmp_path):
    _write(tmp_path / "c", {f"doc{i}": t for i, t in enumerate(clean_texts(4))})
    cfg = small_config(tmp_path / "c", tmp_path / "out", tiny_encoder_dir, incremental=True)
    run_embed(cfg)
    result = run_embed(cfg.model_copy(update={"dtype": "bfloat16"}))
    assert result.counts["rows_embedded"] == 4 and result.counts["rows_reused"] == 0
    assert "different dtype" in result.manifest["incremental"]["decision"]


def test_one_bad_row_replaced_by_another_publishes_the_new_quarantine(ray_session, tiny_encoder_dir, tmp_path):
    texts = {f"doc{i}": t for i, t in enumerate(clean_texts(4))}
    _write(tmp_path / "c", {**texts, "q1": None})
    cfg = small_config(tmp_path / "c", tmp_path / "out", tiny_encoder_dir, incremental=True)
    run_embed(cfg)
    _write(tmp_path / "c", {**texts, "q2": "   "})  # still one bad row, another one
    second = run_embed(cfg)
    assert second.published and second.counts["rows_embedded"] == 0 and second.counts["rows_reused"] == 4
    quarantine = pq.read_table(second.version_dir / "quarantine.parquet")
    assert quarantine.column("id").to_pylist() == ["q2"] and quarantine.column("reason").to_pylist() == ["empty_text"]
    assert run_embed(cfg).published is False  # and now it is the same again
