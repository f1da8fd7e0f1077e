"""Corpus reading, block packing and sentence splitting (stage functions called directly on dict
batches, and through Ray Data for the readers)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from train_helpers import SENTENCES, save_tiny_causal_lm

from l2v_core.testing import tiny_tokenizer
from pipelines.train.data import (
    mntp_blocks,
    pack_blocks,
    read_corpus,
    simcse_sentences,
    split_sentences,
    tokenize_sentences,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "model")


def test_pack_blocks_joins_texts_with_eos_and_cuts_full_blocks(model_dir):
    tok = tiny_tokenizer()
    texts = np.array(SENTENCES[:4], dtype=object)
    out = pack_blocks({"text": texts}, model_path=model_dir, block_size=16)
    stream = []
    for t in SENTENCES[:4]:
        stream += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert out["input_ids"].shape == (len(stream) // 16, 16)
    assert out["input_ids"].ravel().tolist() == stream[: out["input_ids"].size]


def test_split_sentences():
    assert split_sentences("The cat sat. It slept! Did it? 3 dogs ran.") == [
        "The cat sat.", "It slept!", "Did it?", "3 dogs ran."
    ]
    assert split_sentences("Dr. smith stayed at e.g. home.") == ["Dr. smith stayed at e.g. home."]


def test_tokenize_sentences_drops_short_ones_and_marks_pooled_tokens(model_dir):
    batch = {"text": np.array(["Short. " + SENTENCES[0] + " " + SENTENCES[1]], dtype=object)}
    table = tokenize_sentences(batch, model_path=model_dir, max_length=64, split=True, min_chars=10)
    assert isinstance(table, pa.Table) and table.num_rows == 2
    ids, mask = table.column("input_ids").to_pylist(), table.column("pool_mask").to_pylist()
    assert all(len(i) == len(m) and all(m) for i, m in zip(ids, mask))


def test_tokenize_sentences_with_an_instruction_pools_only_the_sentence(model_dir):
    batch = {"text": np.array([SENTENCES[0]], dtype=object)}
    plain = tokenize_sentences(batch, model_path=model_dir, max_length=64, split=False, min_chars=10)
    table = tokenize_sentences(batch, model_path=model_dir, max_length=64, split=False, min_chars=10,
                               instruction="Retrieve semantically similar text:")
    [ids], [mask] = table.column("input_ids").to_pylist(), table.column("pool_mask").to_pylist()
    assert len(ids) > plain.column("input_ids").to_pylist()[0].__len__()
    assert mask[0] == 0 and mask[-1] == 1  # instruction attended to, not pooled
    assert sum(mask) == len(plain.column("pool_mask").to_pylist()[0])


def test_read_corpus_parquet_with_a_named_column_and_text_files(ray_session, tmp_path, model_dir):
    pq.write_table(pa.table({"id": [1, 2, 3], "body": [SENTENCES[0], "   ", SENTENCES[1]]}), tmp_path / "c.parquet")
    rows = read_corpus(str(tmp_path / "c.parquet"), text_column="body").take_all()
    assert [r["text"] for r in rows] == [SENTENCES[0], SENTENCES[1]]  # blank rows dropped
    # a folder given as a URI (s3://... in production) is recognised as parquet too
    (tmp_path / "p").mkdir()
    pq.write_table(pa.table({"text": [SENTENCES[2]]}), tmp_path / "p" / "part-0.parquet")
    assert [r["text"] for r in read_corpus((tmp_path / "p").as_uri()).take_all()] == [SENTENCES[2]]
    (tmp_path / "one.txt").write_text(SENTENCES[2] + "\n")  # a text file named directly stays text
    assert [r["text"] for r in read_corpus(str(tmp_path / "one.txt")).take_all()] == [SENTENCES[2]]

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.txt").write_text("\n".join(SENTENCES * 3) + "\n\n")
    blocks = mntp_blocks(str(tmp_path / "t"), model_path=model_dir, block_size=32).take_all()
    assert blocks and all(len(b["input_ids"]) == 32 for b in blocks)
    sentences = simcse_sentences(
        str(tmp_path / "t"), model_path=model_dir, max_length=32, split=False, min_chars=5
    ).count()
    assert sentences == len(SENTENCES) * 3


def test_missing_corpus_says_what_to_pass():
    with pytest.raises(FileNotFoundError, match="parquet"):
        read_corpus("/nonexistent/corpus")
