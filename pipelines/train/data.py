"""Ray Data for training: read a corpus, pack MNTP token blocks, split and tokenize SimCSE sentences.

`--corpus` is a parquet file/folder with a text column, or plain text files (one row per line).
Tokenizers load once per Ray worker process (cached by path), never once per batch.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from ..sources import list_parquet_files

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")
_READ_BATCH_ROWS = 256  # rows tokenized together; packing leftovers are dropped per batch


def read_corpus(path: str, text_column: str = "text") -> ray.data.Dataset:
    """A dataset with one column `text` and no empty rows.

    Parquet when `path` is a .parquet file or a folder holding any; otherwise text files read
    line by line (wikitext's raw files, a one-sentence-per-line file, ...).
    """
    local = Path(path)
    if local.exists() and not (local.is_file() or any(local.rglob("*"))):
        raise FileNotFoundError(f"corpus folder {path} is empty")
    if not local.exists() and "://" not in path:
        raise FileNotFoundError(f"corpus {path} does not exist (pass a parquet file/folder or text files)")
    if _is_parquet(path):
        ds = ray.data.read_parquet(path, columns=[text_column])
        if text_column != "text":
            ds = ds.rename_columns({text_column: "text"})
    else:
        ds = ray.data.read_text(path)
    return ds.map_batches(_drop_blank, batch_format="pyarrow")


def _is_parquet(path: str) -> bool:
    """A .parquet file, or a folder (local or remote, e.g. s3://bucket/corpus/) holding any."""
    if path.endswith(".parquet"):
        return True
    try:
        found = list_parquet_files([path])  # a file comes back whatever its extension; folders give only .parquet
    except FileNotFoundError:
        return False
    return any(f.endswith(".parquet") for f in found)


def _drop_blank(batch: pa.Table) -> pa.Table:
    """Rows whose text is null, empty or only whitespace carry nothing to learn from."""
    stripped = pc.utf8_trim_whitespace(batch.column("text"))
    return batch.filter(pc.fill_null(pc.greater(pc.utf8_length(stripped), 0), False))


@functools.lru_cache(maxsize=4)
def _tokenizer(model_path: str):
    from l2v_core import load_tokenizer

    return load_tokenizer(model_path)


def pack_blocks(batch: dict, *, model_path: str, block_size: int) -> dict:
    """Tokenize texts, join them with EOS, cut the stream into full blocks of `block_size` tokens.

    batch: {"text": (n,)} -> {"input_ids": (n_blocks, block_size) int64}. The tail shorter than a
    block is dropped (as the reference's group_texts does).
    """
    tokenizer = _tokenizer(model_path)
    texts = [t.strip() for t in batch["text"]]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    for row in ids:
        stream.extend(row)
        stream.append(tokenizer.eos_token_id)
    n_blocks = len(stream) // block_size
    blocks = np.asarray(stream[: n_blocks * block_size], dtype=np.int64).reshape(n_blocks, block_size)
    return {"input_ids": blocks}


def mntp_blocks(corpus: str, *, model_path: str, block_size: int, text_column: str = "text") -> ray.data.Dataset:
    """The MNTP training set: fixed-length token blocks (column `input_ids`)."""
    return read_corpus(corpus, text_column).map_batches(
        pack_blocks, fn_kwargs={"model_path": model_path, "block_size": block_size},
        batch_size=_READ_BATCH_ROWS, batch_format="numpy",
    )


def split_sentences(text: str) -> list[str]:
    """Sentences of a paragraph: cut after . ! ? followed by space and a capital, digit or quote."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def tokenize_sentences(batch: dict, *, model_path: str, max_length: int, split: bool, min_chars: int,
                       instruction: str | None = None) -> pa.Table:
    """{"text": (n,)} -> table {"input_ids": list<int32>, "pool_mask": list<int8>}, one row per sentence.
    With `instruction`, each sentence follows it; its tokens are attended to, not pooled."""
    from l2v_core import tokenize_texts

    sentences: list[str] = []
    for text in batch["text"]:
        parts = split_sentences(text) if split else [text.strip()]
        sentences.extend(s for s in parts if len(s) >= min_chars)
    if not sentences:
        return pa.table(
            {"input_ids": pa.array([], pa.list_(pa.int32())), "pool_mask": pa.array([], pa.list_(pa.int8()))}
        )
    tokenized = tokenize_texts(_tokenizer(model_path), sentences, instruction, max_length=max_length)
    return pa.table({
        "input_ids": pa.array(tokenized.input_ids, pa.list_(pa.int32())),
        "pool_mask": pa.array(tokenized.pool_mask, pa.list_(pa.int8())),
    })


def simcse_sentences(
    corpus: str, *, model_path: str, max_length: int, split: bool, min_chars: int, text_column: str = "text",
    instruction: str | None = None,
) -> ray.data.Dataset:
    """The SimCSE training set: tokenized sentences (columns `input_ids`, `pool_mask`)."""
    return read_corpus(corpus, text_column).map_batches(
        tokenize_sentences,
        fn_kwargs={"model_path": model_path, "max_length": max_length, "split": split, "min_chars": min_chars,
                   "instruction": instruction},
        batch_size=_READ_BATCH_ROWS, batch_format="numpy",
    )
