"""Scan: read one file's id and text columns once, sort every row into "valid" or "quarantine".

`scan_file` runs inside a Ray task per file (no model; pyarrow only; see `plan_tasks.py`). It
checks the columns, gives every row a reason when it cannot be embedded, and hashes the text of
the others. Duplicate ids across files are resolved later, by id partition (`plan_tasks.py`).
Nothing is dropped silently: every row read is either valid or has a quarantine row saying why.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..sources import filesystem_of

SCAN_BATCH_ROWS = 65536
PREVIEW_CHARS = 120

# Quarantine reasons (the `reason` column); `detail` says more in words.
NULL_ID = "null_id"
EMPTY_ID = "empty_id"
NULL_TEXT = "null_text"
EMPTY_TEXT = "empty_text"
NON_STRING_TEXT = "non_string_text"
DUPLICATE_ID = "duplicate_id"
REASONS = (NULL_ID, EMPTY_ID, NULL_TEXT, EMPTY_TEXT, NON_STRING_TEXT, DUPLICATE_ID)

GOOD_SCHEMA = pa.schema([("id", pa.string()), ("content_hash", pa.string()), ("row", pa.int64())])
BAD_SCHEMA = pa.schema([
    ("row", pa.int64()), ("id", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
    ("text_preview", pa.string()),
])
QUARANTINE_SCHEMA = pa.schema([
    ("id", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
    ("source_file", pa.string()), ("source_row", pa.int64()), ("text_preview", pa.string()),
])


class MissingColumnsError(ValueError):
    """The id or text column (or the title column asked for) is not in a file."""


class IdTypeError(ValueError):
    """The id column holds values that cannot be ids (lists, booleans, fractional numbers, ...)."""


MAX_EXACT_FLOAT_ID = 2**53  # float64 holds every integer up to here exactly


@dataclass(frozen=True)
class Columns:
    id: str
    text: str
    title: str | None = None

    @property
    def names(self) -> list[str]:
        return [self.id, self.text] + ([self.title] if self.title else [])


def compose_text(title, text: str) -> str:
    """What is embedded and hashed: 'title\\n\\ntext' when the row has a title, else the text."""
    if isinstance(title, str) and title.strip():
        return f"{title.strip()}\n\n{text}"
    return text


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def check_columns(uri: str, schema: pa.Schema, columns: Columns) -> None:
    missing = [c for c in columns.names if c not in schema.names]
    if missing:
        raise MissingColumnsError(
            f"{uri} has no column {', '.join(repr(m) for m in missing)}; its columns are: {', '.join(schema.names)}. "
            f"Name the right ones with --id-column / --text-column / --title-column."
        )


def check_id_type(uri: str, type_: pa.DataType) -> None:
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    if not (_is_text(type_) or pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_null(type_)):
        raise IdTypeError(f"{uri}: the id column has type {type_}; use string or integer ids")


def open_parquet(uri: str) -> pq.ParquetFile:
    fs, path = filesystem_of(uri)
    return pq.ParquetFile(fs.open_input_file(path))


@dataclass(frozen=True)
class FileScan:
    """One file's scan: `good` (GOOD_SCHEMA) and `bad` (BAD_SCHEMA) rows, or one of the three
    problems that stop the file (`error`: unreadable; `missing_columns`; `bad_id_type`)."""

    path: str
    num_rows: int = 0
    good: pa.Table | None = None
    bad: pa.Table | None = None
    error: str | None = None
    missing_columns: str | None = None
    bad_id_type: str | None = None


def scan_file(uri: str, columns: Columns) -> FileScan:
    try:
        parquet = open_parquet(uri)
        schema = parquet.schema_arrow
    except Exception as err:  # noqa: BLE001 - any reader failure means the file is unreadable
        return FileScan(uri, error=f"{type(err).__name__}: {err}")
    try:
        check_columns(uri, schema, columns)
        check_id_type(uri, schema.field(columns.id).type)
    except MissingColumnsError as err:
        return FileScan(uri, missing_columns=str(err))
    except IdTypeError as err:
        return FileScan(uri, bad_id_type=str(err))
    goods, bads, offset = [], [], 0
    try:
        for batch in parquet.iter_batches(batch_size=SCAN_BATCH_ROWS, columns=columns.names):
            good, bad = _scan_batch(batch, columns, offset)
            goods.append(good)
            bads.append(bad)
            offset += batch.num_rows
    except IdTypeError as err:  # the column's type was fine, its values are not: not a reading problem
        return FileScan(uri, bad_id_type=f"{uri}, rows from ~{offset}: {err}")
    except Exception as err:  # noqa: BLE001
        return FileScan(uri, error=f"{type(err).__name__} at row ~{offset}: {err}")
    return FileScan(
        uri, num_rows=offset,
        good=pa.concat_tables(goods) if goods else GOOD_SCHEMA.empty_table(),
        bad=pa.concat_tables(bads) if bads else BAD_SCHEMA.empty_table(),
    )


def _decode(array: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array


def normalize_ids(array) -> pa.Array:
    """Ids as strings (integers become their decimal text); nulls stay null."""
    array = _decode(array)
    if pa.types.is_string(array.type):
        return array
    if _is_text(array.type) or pa.types.is_integer(array.type) or pa.types.is_null(array.type):
        return pc.cast(array, pa.string())
    if pa.types.is_floating(array.type):
        return _whole_number_ids(array)
    raise IdTypeError(f"the id column has type {array.type}; use string or integer ids")


def _whole_number_ids(array: pa.Array) -> pa.Array:
    """pandas writes an integer id column that holds a null as float64: accepted as integers when
    every value is a whole number float64 holds exactly, so that 12 and 12.0 are the same id.
    Anything else would be silently rounded ("1.152921504606847e+18") and merge distinct ids."""
    values = array.drop_null()
    if len(values):
        whole = pc.and_(pc.equal(pc.floor(values), values), pc.less_equal(pc.abs(values), MAX_EXACT_FLOAT_ID))
        if not pc.all(whole).as_py():
            raise IdTypeError(
                f"the id column has type {array.type} with values that are not whole numbers up to 2^53 "
                f"(e.g. {values.filter(pc.invert(whole))[0].as_py()!r}); write the ids as strings or int64"
            )
    return pc.cast(pc.cast(array, pa.int64()), pa.string())


def _is_text(type_: pa.DataType) -> bool:
    return (
        pa.types.is_string(type_)
        or pa.types.is_large_string(type_)
        or getattr(pa.types, "is_string_view", lambda t: False)(type_)
    )


def _scan_batch(batch: pa.RecordBatch, columns: Columns, offset: int) -> tuple[pa.Table, pa.Table]:
    ids = normalize_ids(batch.column(columns.id)).to_pylist()
    text_array = _decode(batch.column(columns.text))
    titles = _decode(batch.column(columns.title)).to_pylist() if columns.title else [None] * batch.num_rows
    text_is_string = _is_text(text_array.type) or pa.types.is_null(text_array.type)
    texts = text_array.to_pylist()
    good = {"id": [], "content_hash": [], "row": []}
    bad = {"row": [], "id": [], "reason": [], "detail": [], "text_preview": []}
    for i, (id_, text, title) in enumerate(zip(ids, texts, titles)):
        reason, detail = _row_problem(id_, text, text_is_string, text_array.type)
        if reason is None:
            good["id"].append(id_)
            good["content_hash"].append(content_hash(compose_text(title, text)))
            good["row"].append(offset + i)
        else:
            bad["row"].append(offset + i)
            bad["id"].append(id_)
            bad["reason"].append(reason)
            bad["detail"].append(detail)
            bad["text_preview"].append(None if text is None else repr(text)[:PREVIEW_CHARS])
    return pa.table(good, schema=GOOD_SCHEMA), pa.table(bad, schema=BAD_SCHEMA)


def _row_problem(id_, text, text_is_string: bool, text_type: pa.DataType) -> tuple[str | None, str | None]:
    if id_ is None:
        return NULL_ID, "the id is null: a row without an id cannot be found again (fill or drop it upstream)"
    if id_ == "":
        # what CSV and pandas exports write for a missing id: treated as one, not as a real id
        return EMPTY_ID, "the id is empty: a missing id written as '' (fill or drop it upstream)"
    if not text_is_string:
        return NON_STRING_TEXT, f"the text column has type {text_type} in this file; expected a string column"
    if text is None:
        return NULL_TEXT, "the text is null"
    if is_blank(text):
        return EMPTY_TEXT, "the text is empty, whitespace or invisible characters only: nothing to embed"
    return None, None


def is_blank(text: str) -> bool:
    """Nothing a reader would see: whitespace and invisible format characters (Unicode category
    Cf: zero-width space U+200B, joiners, word joiner U+2060, byte order mark U+FEFF, ...).
    A vector of such a text says nothing about any document. Stops at the first visible
    character, so long texts cost nothing."""
    return all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in text)
