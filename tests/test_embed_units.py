"""Embedding pipeline pieces called directly on tables: no Ray cluster."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.embed.batch_udfs import EmbedActor, read_planned_rows, tokenize_rows
from pipelines.embed.config import EmbedConfig, parse_size
from pipelines.embed.plan_tasks import EMBED, INPUT_SCHEMA, keep_first_copies
from pipelines.embed.scan import Columns, compose_text, content_hash, scan_file
from pipelines.sources import list_parquet_files

COLS = Columns("id", "text")


def _write(path, **columns):
    pq.write_table(pa.table(columns), path)
    return str(path)


def test_config_rejects_typos_and_reads_sizes(tmp_path):
    with pytest.raises(ValueError, match="extra"):
        EmbedConfig(input=["x"], output="y", batch_sizee=3)
    assert EmbedConfig(input="x", output="y").input == ["x"]
    assert parse_size("4GiB") == 4 << 30 and parse_size("512m") == 512 << 20 and parse_size("100") == 100
    with pytest.raises(ValueError, match="4GiB"):
        parse_size("lots")


def test_list_files_folder_glob_and_missing(tmp_path):
    a = _write(tmp_path / "a.parquet", id=["1"], text=["x"])
    (tmp_path / "sub").mkdir()
    b = _write(tmp_path / "sub" / "b.parquet", id=["2"], text=["y"])
    _write(tmp_path / "_hidden.parquet", id=["3"], text=["z"])
    assert list_parquet_files([str(tmp_path)]) == sorted([a, b])
    assert list_parquet_files([str(tmp_path / "*.parquet")]) == sorted([a, str(tmp_path / "_hidden.parquet")])
    assert list_parquet_files([a, a]) == [a]
    with pytest.raises(FileNotFoundError, match="matched no parquet"):
        list_parquet_files([str(tmp_path / "nothing")])


def test_scan_gives_each_bad_row_a_reason(tmp_path):
    path = _write(tmp_path / "a.parquet", id=["a", None, "c", "d", "e"], text=["ok", "fine", None, "  \n", "good"])
    scan = scan_file(path, COLS)
    assert scan.num_rows == 5
    assert scan.good.column("id").to_pylist() == ["a", "e"]
    assert scan.good.column("content_hash").to_pylist()[0] == content_hash("ok")
    assert scan.bad.column("reason").to_pylist() == ["null_id", "null_text", "empty_text"]
    assert scan.bad.column("row").to_pylist() == [1, 2, 3]


def test_scan_non_string_text_missing_column_and_corrupt_file(tmp_path):
    ints = _write(tmp_path / "ints.parquet", id=[1, 2], text=[10, 20])
    scan = scan_file(ints, COLS)
    assert scan.bad.column("reason").to_pylist() == ["non_string_text"] * 2
    assert scan.bad.column("id").to_pylist() == ["1", "2"]  # integer ids become text
    assert "its columns are: id, body" in scan_file(
        _write(tmp_path / "m.parquet", id=["1"], body=["x"]), COLS
    ).missing_columns
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    assert scan_file(str(corrupt), COLS).error


def test_id_types_whole_floats_become_integers_anything_else_is_refused(tmp_path):
    # pandas writes an int64 id column holding a null as float64
    floats = _write(tmp_path / "f.parquet", id=pa.array([2.0**52, None, 7.0]), text=["a", "b", "c"])
    scan = scan_file(floats, COLS)
    assert scan.good.column("id").to_pylist() == [str(2**52), "7"]
    assert scan.bad.column("reason").to_pylist() == ["null_id"]
    rounded = _write(tmp_path / "r.parquet", id=pa.array([float(2**60), 1.0]), text=["a", "b"])
    assert "not whole numbers up to 2^53" in scan_file(rounded, COLS).bad_id_type
    fractional = _write(tmp_path / "x.parquet", id=pa.array([1.5]), text=["a"])
    assert "1.5" in scan_file(fractional, COLS).bad_id_type
    lists = _write(tmp_path / "l.parquet", id=pa.array([[1], [2]]), text=["a", "b"])
    assert "use string or integer ids" in scan_file(lists, COLS).bad_id_type


def _valid_rows(paths):
    """The valid rows of each file, as the scan hands them to the id partitions."""
    tables = []
    for i, path in enumerate(paths):
        good = scan_file(path, COLS).good
        tables.append(good.append_column("file_index", pa.array([i] * good.num_rows, pa.int32())))
    return pa.concat_tables(tables).cast(INPUT_SCHEMA)


def test_plan_keeps_first_valid_copy_of_a_duplicate(tmp_path):
    a = _write(tmp_path / "a.parquet", id=["x", "y", "x"], text=["   ", "why", "second x"])
    b = _write(tmp_path / "b.parquet", id=["x", "y"], text=["third x", "why"])
    kept, dups = keep_first_copies(_valid_rows([a, b]), [a, b])
    assert sorted(zip(kept.column("id").to_pylist(), kept.column("file_index").to_pylist(),
                      kept.column("row").to_pylist())) == [("x", 0, 2), ("y", 0, 1)]
    assert scan_file(a, COLS).bad.column("reason").to_pylist() == ["empty_text"]
    dups = dups.to_pylist()
    assert [d["reason"] for d in dups] == ["duplicate_id"] * 2
    by_id = {d["id"]: d for d in dups}
    assert f"kept the copy at {a} row 2" in by_id["x"]["detail"] and "different text" in by_id["x"]["detail"]
    assert f"kept the copy at {a} row 1" in by_id["y"]["detail"] and "same text" in by_id["y"]["detail"]


def test_read_tokenize_embed_stages_on_a_table(tmp_path, tiny_encoder_dir):
    path = _write(tmp_path / "a.parquet", id=[1, 2, 3], text=["alpha", "bravo", "charlie"], title=["T", None, ""])
    planned = pa.table({"file_index": pa.array([0, 0], pa.int32()), "row": [0, 2], "id": ["1", "3"],
                        "content_hash": [content_hash("T\n\nalpha"), content_hash("charlie")]})
    (tmp_path / "plan" / EMBED).mkdir(parents=True)
    pq.write_table(planned, tmp_path / "plan" / EMBED / "part-00000.parquet")
    units = pa.table({"path": [path], "file_index": [0], "rows": [2], "plan_dir": [str(tmp_path / "plan")]})
    rows = pa.concat_tables(list(read_planned_rows(units, columns=Columns("id", "text", "title"))))
    assert rows.column("id").to_pylist() == ["1", "3"]
    assert rows.column("text").to_pylist() == [compose_text("T", "alpha"), "charlie"] == ["T\n\nalpha", "charlie"]
    tokens = tokenize_rows(rows, model_path=str(tiny_encoder_dir), max_length=128, instruction=None)
    from l2v_core import Encoder

    encoder = Encoder.from_pretrained(str(tiny_encoder_dir))
    actor = EmbedActor(model=str(tiny_encoder_dir), identity=encoder.identity(), max_length=None, device="cpu",
                       dtype=None, batch_tokens=64, store_text=True, cpu_threads=1, stats_dir=str(tmp_path / "stats"))
    out = actor(tokens)
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), encoder.dim)
    vectors = np.stack(out.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(vectors, encoder.encode(["T\n\nalpha", "charlie"]), atol=1e-5)
    with pytest.raises(RuntimeError, match="differs from the one the run was planned with"):
        EmbedActor(model=str(tiny_encoder_dir), identity={**encoder.identity(), "pooling": "last_token"},
                   max_length=None, device="cpu", dtype=None, batch_tokens=64, store_text=True, cpu_threads=1,
                   stats_dir=str(tmp_path / "stats"))


def test_embed_job_exit_codes(tmp_path):
    from jobs import embed_corpus as job

    corpus = _write(tmp_path / "a.parquet", doc_id=["1"], body=["x"])
    assert job.main(["--input", corpus, "--output", str(tmp_path / "out")]) == 2  # missing id/text columns
    assert job.main(["--input", str(tmp_path / "none"), "--output", str(tmp_path / "out")]) == 2
    assert job.main(["--input", corpus]) == 2  # no --output
    broken = tmp_path / "broken.yaml"
    broken.write_text("input: [unclosed\n")
    assert job.main(["--config", str(broken)]) == 2
    from pipelines.embed.layout import OutputLayout

    with OutputLayout(tmp_path / "locked").lock():
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(f"input: [{corpus}]\noutput: {tmp_path / 'locked'}\nid_column: doc_id\ntext_column: body\n")
        assert job.main(["--config", str(cfg)]) == 3  # another run holds the lock
