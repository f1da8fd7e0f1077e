"""Bad input on local Ray: every kind of bad row with exact counts, a missing column, corrupt files."""

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from embed_helpers import small_config

from pipelines.embed import BadFileError, MissingColumnsError, OutputLayout, run_embed
from pipelines.embed.scan import IdTypeError


@pytest.fixture
def messy_corpus(tmp_path):
    """a: 6 rows (2 good, null text, empty text, null id, a duplicate of a good id)
    b: 4 rows (a later copy of 'a1', a good row, the first valid copy of 'a3', a huge text)
    c: 2 rows whose text column is an integer column
    d: not parquet at all."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    pq.write_table(pa.table({
        "id": ["a1", "a2", "a3", "a4", None, "a2"],
        "text": ["alpha text", "bravo text", None, "   ", "orphan text", "bravo again"],
    }), folder / "a.parquet")
    pq.write_table(pa.table({"id": ["a1", "b1", "a3", "b2"],
                             "text": ["alpha later", "charlie text", "a3 has text here", "huge " * 50_000]}),
                   folder / "b.parquet")
    pq.write_table(pa.table({"id": [7, 8], "text": [1, 2]}), folder / "c.parquet")
    (folder / "d.parquet").write_bytes(b"PAR1 definitely not a parquet file PAR1")
    return folder


def test_bad_rows_are_quarantined_with_exact_counts(ray_session, messy_corpus, tiny_encoder_dir, tmp_path):
    result = run_embed(small_config(messy_corpus, tmp_path / "out", tiny_encoder_dir, skip_bad_files=True))
    counts = result.counts
    assert counts["rows_read"] == 12 and counts["files_skipped"] == 1
    assert counts["rows_embedded"] == 5  # a1, a2, b1, b2 and a3 (its first valid copy is in b)
    assert counts["rows_truncated"] == 1  # b2: embedded from its first max_length tokens, and counted
    assert counts["quarantine_by_reason"] == {
        "null_text": 1, "empty_text": 1, "null_id": 1, "duplicate_id": 2, "non_string_text": 2,
    }
    assert counts["rows_read"] == counts["rows_embedded"] + counts["rows_quarantined"]
    vectors = pq.read_table(result.version_dir / "vectors")
    by_id = dict(zip(vectors.column("id").to_pylist(), vectors.column("text").to_pylist()))
    assert by_id.pop("b2") == "huge " * 50_000  # the stored text is whole; only the model saw a prefix
    assert by_id == {"a1": "alpha text", "a2": "bravo text", "b1": "charlie text", "a3": "a3 has text here"}
    quarantine = pq.read_table(result.version_dir / "quarantine.parquet")
    dups = quarantine.filter(pc.equal(quarantine.column("reason"), "duplicate_id")).to_pylist()
    assert {(d["id"], d["source_file"].rsplit("/", 1)[1], d["source_row"]) for d in dups} == {
        ("a2", "a.parquet", 5), ("a1", "b.parquet", 0)
    }
    assert all("kept the copy at" in d["detail"] and "first valid copy" in d["detail"] for d in dups)
    assert [b["path"].rsplit("/", 1)[1] for b in result.manifest["input"]["bad_files"]] == ["d.parquet"]


def test_missing_column_stops_before_any_work(messy_corpus, tiny_encoder_dir, tmp_path):
    with pytest.raises(MissingColumnsError, match=r"no column 'body'; its columns are: id, text"):
        run_embed(small_config(messy_corpus, tmp_path / "out", tiny_encoder_dir, text_column="body"))
    assert not (tmp_path / "out").exists()


def test_corrupt_file_fails_naming_it(ray_session, messy_corpus, tiny_encoder_dir, tmp_path):
    with pytest.raises(BadFileError, match=r"d\.parquet.*--skip-bad-files"):
        run_embed(small_config(messy_corpus, tmp_path / "out", tiny_encoder_dir))
    assert OutputLayout(tmp_path / "out").versions() == []


def test_unusable_id_type_stops_the_run_even_with_skip_bad_files(ray_session, tiny_encoder_dir, tmp_path):
    (tmp_path / "c").mkdir()
    pq.write_table(pa.table({"id": [["a"], ["b"]], "text": ["x", "y"]}), tmp_path / "c" / "lists.parquet")
    with pytest.raises(IdTypeError, match=r"lists\.parquet: the id column has type list"):
        run_embed(small_config(tmp_path / "c", tmp_path / "out", tiny_encoder_dir, skip_bad_files=True))
    assert OutputLayout(tmp_path / "out").current() is None


def test_a_file_rewritten_between_scan_and_read_is_never_published(ray_session, tiny_encoder_dir, tmp_path,
                                                                   monkeypatch):
    from pipelines import faults

    (tmp_path / "c").mkdir()
    path = tmp_path / "c" / "a.parquet"
    pq.write_table(pa.table({"id": ["d0", "d1", "d2"], "text": ["zero", "one", "two"]}), path)
    real_point = faults.point

    def rewrite_after_scan(name):
        if name == "after_scan":  # same row count, so only the ids and texts give it away
            pq.write_table(pa.table({"id": ["d0", "d0", "d2"], "text": ["zero", "uno", "two"]}), path)
        real_point(name)

    monkeypatch.setattr(faults, "point", rewrite_after_scan)
    with pytest.raises(RuntimeError, match="do not match the scanned input"):
        run_embed(small_config(tmp_path / "c", tmp_path / "out", tiny_encoder_dir))
    assert OutputLayout(tmp_path / "out").current() is None


def test_skip_bad_files_never_publishes_when_no_file_can_be_read(ray_session, tiny_encoder_dir, tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.parquet").write_bytes(b"PAR1 not parquet")
    with pytest.raises(BadFileError, match="none of the 1 input files can be read"):
        run_embed(small_config(tmp_path / "c", tmp_path / "out", tiny_encoder_dir, skip_bad_files=True))
    assert OutputLayout(tmp_path / "out").current() is None
