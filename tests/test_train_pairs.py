"""Pairs for the supervised stage: columns, bad rows counted and skipped, tokenization, keys."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from train_helpers import save_tiny_causal_lm

from l2v_core.contrastive import NO_TEXT, text_key
from pipelines.train.config import SupervisedSettings
from pipelines.train.pairs import resolve_columns, supervised_pairs, tokenize_pairs

ROWS = [
    {"q": "A cat sits on the mat.", "p": "A cat is on a mat.", "n": "No cat is here."},
    {"q": "The dog sleeps.", "p": "A dog rests.", "n": None},
    {"q": None, "p": "Orphan positive.", "n": "x"},  # skipped: null query
    {"q": "  ", "p": "Blank query.", "n": None},  # skipped: blank query
    {"q": "A fox jumps.", "p": "", "n": "A fox sits."},  # skipped: empty positive
    {"q": "Ray streams data.", "p": "Data flows.", "n": "   "},  # kept, blank negative = none
]


def test_missing_column_names_the_columns_found():
    with pytest.raises(ValueError, match=r"query_column='query'.*\['q', 'p'\]"):
        resolve_columns(["q", "p"], SupervisedSettings())
    cols = resolve_columns(["q", "p"], SupervisedSettings(query_column="q", positive_column="p"))
    assert (cols.query, cols.positive, cols.negative, cols.instruction) == ("q", "p", None, None)
    named = {"query_column": "q", "positive_column": "p"}
    with pytest.raises(ValueError, match="instruction_column='inst'"):
        resolve_columns(["q", "p"], SupervisedSettings(**named, instruction_column="inst"))
    cols = resolve_columns(["q", "p", "n"], SupervisedSettings(**named, negative_column="n"))
    assert cols.negative == "n"


def test_tokenize_pairs_instruction_on_queries_only(tiny_llama):
    _, tokenizer = tiny_llama
    from pipelines.train import pairs

    pairs._tokenizer.cache_clear()
    batch = {"query": ["A cat sits.", "A dog runs."], "positive": ["A cat.", "A dog."],
             "negative": [None, "No dog."], "instruction": [None, "Find the dog:"]}
    import unittest.mock as mock

    with mock.patch.object(pairs, "_tokenizer", return_value=tokenizer):
        out = tokenize_pairs(batch, model_path="tiny", max_length=32, instruction="Retrieve:").to_pylist()
    q0 = tokenizer("Retrieve: A cat sits.")["input_ids"]
    assert out[0]["query_ids"] == q0 and 0 in out[0]["query_pool"]  # instruction attended, not pooled
    assert out[1]["query_ids"] == tokenizer("Find the dog: A dog runs.")["input_ids"]  # the row's own
    assert out[0]["positive_ids"] == tokenizer("A cat.")["input_ids"] and all(out[0]["positive_pool"])
    assert out[0]["negative_ids"] == [] and all(out[1]["negative_pool"])
    assert out[0]["keys"] == [text_key("A cat sits."), text_key("A cat."), NO_TEXT]
    assert out[1]["keys"][2] == text_key("No dog.")


def test_bad_rows_are_counted_and_skipped(ray_session, tmp_path, caplog):
    """Parquet through the whole pipeline (the supervised Ray Train test reads JSONL)."""
    model = save_tiny_causal_lm(tmp_path / "model")
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "pairs.parquet")
    stage = SupervisedSettings(query_column="q", positive_column="p", negative_column="n", max_length=32,
                               instruction="Retrieve:")
    with caplog.at_level("WARNING"):
        ds, counts = supervised_pairs(str(tmp_path / "pairs.parquet"), model_path=model, stage=stage)
    assert (counts.rows, counts.kept, counts.bad_query, counts.bad_positive, counts.with_negative) == (6, 3, 2, 1, 1)
    assert "skipped 3 of 6 rows" in caplog.text
    rows = ds.take_all()
    assert len(rows) == 3
    assert sum(len(r["negative_ids"]) > 0 for r in rows) == 1
