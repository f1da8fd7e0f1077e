"""Issue 11: inputs and outputs a new user gets wrong. A corpus with nothing to embed, settings
that leave no room for text, a damaged published version, --output naming a file, a folder name
with glob characters, and what counts as an id and as text."""

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from embed_helpers import clean_texts, small_config, write_corpus

from jobs import embed_corpus
from pipelines.embed import OutputLayout, run_embed
from pipelines.embed.incremental import REUSED_FILE
from pipelines.embed.manifest import missing_parts
from pipelines.embed.scan import Columns, scan_file
from pipelines.search import CorpusIndex
from pipelines.sources import list_parquet_files

N = 6


def _only_bad_rows(folder):
    """One file of zero rows and one whose text column is int64: every row is quarantined."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}), folder / "a.parquet")
    pq.write_table(pa.table({"id": ["x1", "x2"], "text": [1, 2]}), folder / "b.parquet")
    return folder


@pytest.fixture(scope="module")
def published(ray_session, tiny_encoder_dir, tmp_path_factory):
    """A published output of N documents (copy it before damaging it)."""
    corpus = write_corpus(tmp_path_factory.mktemp("corpus"), n=N, files=1)
    output = tmp_path_factory.mktemp("published") / "out"
    run_embed(small_config(corpus, output, tiny_encoder_dir))
    return corpus, output


def _copy(published, tmp_path):
    corpus, output = published
    return corpus, shutil.copytree(output, tmp_path / "out")


# ------------------------------------------------------------------ 1. nothing to embed
def test_a_full_run_with_nothing_to_embed_publishes_an_empty_version(ray_session, tiny_encoder_dir, tmp_path):
    result = run_embed(small_config(_only_bad_rows(tmp_path / "c"), tmp_path / "out", tiny_encoder_dir))
    assert result.published and OutputLayout(tmp_path / "out").current() == result.version
    c = result.counts
    assert (c["rows_read"], c["rows_embedded"], c["rows_quarantined"]) == (2, 0, 2)
    assert c["quarantine_by_reason"] == {"non_string_text": 2}
    assert pq.read_table(result.version_dir / "quarantine.parquet").column("id").to_pylist() == ["x1", "x2"]
    assert result.manifest["index"]["count"] == 0
    assert CorpusIndex.open(tmp_path / "out").search("anything", k=3) == [[]]


def test_an_incremental_run_never_deletes_every_document(published, tiny_encoder_dir, tmp_path):
    _, output = _copy(published, tmp_path)
    before = OutputLayout(output).current()
    empty = _only_bad_rows(tmp_path / "export")
    with pytest.raises(ValueError, match=rf"would delete all {N} documents.*without --incremental") as err:
        run_embed(small_config(empty, output, tiny_encoder_dir, incremental=True))
    assert OutputLayout(output).current() == before
    report = next(w for w in str(err.value).split() if w.endswith("quarantine.parquet"))
    assert pq.read_table(report).column("reason").to_pylist() == ["non_string_text"] * 2
    # the escape hatch: a full run says the corpus really is empty now
    assert run_embed(small_config(empty, output, tiny_encoder_dir)).manifest["index"]["count"] == 0


# ------------------------------------------------------------------ 2. no room for the text
def test_settings_that_leave_no_room_for_text_fail_before_ray(tiny_encoder_dir, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c", n=2, files=1)
    args = ["--input", str(corpus), "--output", str(tmp_path / "out"), "--model", str(tiny_encoder_dir),
            "--max-length", "3", "--instruction", "Represent this long document for retrieval please"]
    assert embed_corpus.main(args) == 2
    err = capsys.readouterr().err
    assert "no room" in err and "--max-length" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # stopped before the lock, Ray and any version folder


# ------------------------------------------------------------------ 3 + 4. a damaged published version
def test_a_corrupt_published_manifest_is_named_and_a_full_run_recovers(published, tiny_encoder_dir, tmp_path):
    corpus, output = _copy(published, tmp_path)
    manifest = OutputLayout(output).current_dir() / "manifest.json"
    manifest.write_text('{"version": "\x01broken')
    with pytest.raises(ValueError, match=rf"{manifest}.*not valid JSON.*without --incremental"):
        run_embed(small_config(corpus, output, tiny_encoder_dir, incremental=True))
    result = run_embed(small_config(corpus, output, tiny_encoder_dir))
    assert result.published and result.counts["rows_embedded"] == N


def test_an_incremental_run_repairs_a_published_version_missing_its_index(published, tiny_encoder_dir, tmp_path):
    corpus, output = _copy(published, tmp_path)
    layout = OutputLayout(output)
    broken = layout.current()
    (layout.version_dir(broken) / "index.faiss").unlink()
    result = run_embed(small_config(corpus, output, tiny_encoder_dir, incremental=True))
    assert result.published and result.version != broken and layout.current() == result.version
    assert result.counts["rows_reused"] == N and result.counts["rows_embedded"] == 0  # the vectors were whole
    assert "index.faiss" in result.manifest["incremental"]["decision"]
    assert CorpusIndex.open(output).search(clean_texts(N)[2], k=1)[0][0].id == "doc2"
    # damaged vectors are never reused (the run then embeds everything, as for another encoder)
    version_dir = layout.version_dir(result.version)
    assert missing_parts(version_dir, result.manifest) == ([], [])
    (version_dir / "vectors" / REUSED_FILE).unlink()  # every vector of this version was reused
    damaged, _ = missing_parts(version_dir, result.manifest)
    assert damaged and f"the manifest {N}" in damaged[0]


# ------------------------------------------------------------------ 5. --output is a file
def test_output_naming_a_file_is_a_usage_error(tiny_encoder_dir, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c", n=2, files=1)
    (tmp_path / "taken").write_text("a file")
    for output in (tmp_path / "taken", tmp_path / "taken" / "sub"):
        args = ["--input", str(corpus), "--output", str(output), "--model", str(tiny_encoder_dir)]
        assert embed_corpus.main(args) == 2
        err = capsys.readouterr().err
        assert "is a file" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ 7. a folder named with glob characters
def test_an_existing_path_is_taken_literally_before_glob_expansion(tmp_path):
    folder = tmp_path / "corp[1]"
    write_corpus(folder, n=2, files=1)
    (tmp_path / "corp1").mkdir()  # what the glob [1] would match instead
    assert list_parquet_files([str(folder)]) == [str(folder / "part-0.parquet")]
    assert list_parquet_files([str(tmp_path / "corp[[]1]" / "*.parquet")]) == [str(folder / "part-0.parquet")]


# ------------------------------------------------------------------ decisions: ids and invisible text
def test_an_empty_id_and_an_invisible_text_are_quarantined(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"id": ["", "a", "b", "c", "d"],
                             "text": ["fine", "\u200b\u200b", "\u200b \ufeff\u2060\n", "ok\u200b", " text "]}), path)
    scan = scan_file(str(path), Columns("id", "text"))
    assert scan.bad.column("reason").to_pylist() == ["empty_id", "empty_text", "empty_text"]
    assert scan.good.column("id").to_pylist() == ["c", "d"]
    assert json.loads(json.dumps(scan.bad.column("detail").to_pylist()))[0].startswith("the id is empty")
