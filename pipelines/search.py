"""Search a published embedding output: the encoder it was built with, its FAISS index, its ids.

    from pipelines.search import CorpusIndex, search
    hits = search("out/index", "how do I read a parquet file?", k=5)
    index = CorpusIndex.open("out/index")           # load once, search many times
    for hit in index.search(["query one", "query two"], k=3)[0]:
        print(hit.rank, hit.score, hit.id, hit.text)

Queries get the encoder's 'query' instruction unless another is given (pass instruction="" for
none). The encoder is loaded from where the manifest says it came from, and its identity must
equal the manifest's: vectors from one model are never searched with another.

A chunked index (`--chunk-tokens`: one vector per passage) answers with documents by default
(`group_by="doc"`): each document scores its best passage, and its hit carries that passage's id,
chunk number, character span in the document's text and text. `group_by="passage"` returns the
passages themselves. An unchunked index answers as it always has (one vector per document);
`group_by` changes nothing there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq

from pipelines.embed.index_build import DOC_ID, apply_search_params
from pipelines.embed.layout import REPAIR, DamagedOutputError, OutputLayout, inside

logger = logging.getLogger(__name__)

GROUP_BY = ("doc", "passage")
OVERFETCH = 8  # grouped search asks the index for k * OVERFETCH passages first, more while documents are short
SPAN_COLUMNS = ("chunk", "char_start", "char_end")


@dataclass
class Hit:
    """One result. `id` is the corpus id: the document's when grouped by document (or unchunked),
    the passage's when grouped by passage. The passage fields are None on an unchunked index."""

    rank: int
    id: str
    score: float
    text: str | None = None  # the passage's text on a chunked index (the document's otherwise)
    doc_id: str | None = None
    passage_id: str | None = None  # grouped by document: the best passage
    chunk: int | None = None  # 0-based passage number in the document
    char_start: int | None = None  # document_text[char_start:char_end] is the passage
    char_end: int | None = None

    def to_dict(self) -> dict:
        """The fields as JSON; an unchunked hit keeps its four fields only (rank, id, score, text)."""
        if self.doc_id is None:
            return {f.name: getattr(self, f.name) for f in fields(self)[:4]}
        return asdict(self)


class CorpusIndex:
    def __init__(self, version_dir: Path, manifest: dict, index, id_map, encoder):
        self.version_dir = version_dir
        self.manifest = manifest
        self.index = index
        self.encoder = encoder
        self._faiss_ids = id_map.column("faiss_id").to_numpy()
        self._ids = id_map.column("id")
        self._files = id_map.column("file")
        self._rows = id_map.column("row").to_numpy()
        self.has_text = "text" in manifest["vectors"]["columns"]
        self.chunked = bool(manifest.get("chunking")) or DOC_ID in id_map.column_names
        if self.chunked and DOC_ID not in id_map.column_names:
            raise ValueError(f"version {manifest.get('version')} is chunked but its id map has no {DOC_ID} column: "
                             "rebuild it (run jobs/embed_corpus.py without --incremental)")
        # documents as small integers, so grouping a result list is array work, not string compares
        self._doc_ids = id_map.column(DOC_ID).combine_chunks().dictionary_encode() if self.chunked else None
        self._doc_codes = self._doc_ids.indices.to_numpy(zero_copy_only=False) if self.chunked else None
        stored = manifest["vectors"]["columns"]
        self._span_columns = [c for c in SPAN_COLUMNS if c in stored] if self.chunked else []

    @classmethod
    def open(cls, output: str | Path, *, version: str | None = None, encoder=None, model: str | None = None,
             device: str | None = None, encoder_identity: dict | None = None) -> CorpusIndex:
        """Load the published version of `output` (or `version`) and the encoder it names.
        Pass `encoder` to reuse one already loaded, or `model` for a moved copy of the same
        weights (loaded with the manifest's settings); either must have the same identity.
        `encoder_identity`: the reused encoder's identity, known already (the query service passes
        it so that a background load never touches a tokenizer that requests are using)."""
        layout = OutputLayout(output)
        version_dir = layout.version_dir(version) if version else layout.current_dir()
        manifest = layout.read_manifest(version_dir.name)
        info = _read_part(version_dir, manifest["index"]["info"], lambda path: json.loads(path.read_text()))
        index = _read_part(version_dir, manifest["index"]["file"], lambda path: faiss.read_index(str(path)))
        apply_search_params(index, info.get("search_params", {}))
        id_map = _read_part(version_dir, manifest["index"]["id_map"],
                            lambda path: pq.read_table(path).sort_by("faiss_id"))
        encoder = encoder or _load_encoder(manifest, device, model)
        _check_identity(encoder_identity or encoder.identity(), manifest)
        return cls(version_dir, manifest, index, id_map, encoder)

    @property
    def version(self) -> str:
        return self.manifest["version"]

    def grouping(self, group_by: str | None = None) -> str | None:
        """What `group_by` means here: "doc" or "passage" on a chunked index (None: "doc"), None on
        an unchunked one (one vector per document: nothing to group)."""
        if group_by is not None and group_by not in GROUP_BY:
            raise ValueError(f"group_by must be 'doc', 'passage' or None (doc when the index is chunked), "
                             f"got {group_by!r}")
        if not self.chunked:
            return None
        return group_by or "doc"

    def search(self, queries: str | Sequence[str], k: int = 10, instruction: str | None = None,
               with_text: bool = True, group_by: str | None = None) -> list[list[Hit]]:
        """Top-k hits per query (a single string gives a list of one): k documents when grouped
        by document, else k passages (chunked) or k documents (unchunked). Arguments are checked
        before the model runs."""
        queries = [queries] if isinstance(queries, str) else list(queries)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.grouping(group_by)
        empty = [i for i, q in enumerate(queries) if not isinstance(q, str) or not q.strip()]
        if empty:
            raise ValueError(f"query {empty[0]} (0-based) is empty or not a string: give some text to search for")
        if instruction is None:
            instruction = self.encoder.settings.instructions.get("query")
        vectors = self.encoder.encode(queries, instruction or None, normalize=True)
        return self.search_vectors(vectors, k, with_text=with_text, group_by=group_by)

    def search_vectors(self, vectors: np.ndarray, k: int = 10, with_text: bool = True,
                       group_by: str | None = None) -> list[list[Hit]]:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        grouping = self.grouping(group_by)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if grouping == "doc":
            found = self._best_passage_per_document(vectors, k)
        else:
            found = self._top_k(vectors, min(k, self.index.ntotal))
        columns = (["text"] if with_text and self.has_text else []) + self._span_columns
        stored = self._stored(np.concatenate([p for p, _ in found] or [np.zeros(0, np.int64)]), columns)
        return [[self._hit(rank, int(pos), float(score), stored.get(int(pos), {}), grouping)
                 for rank, (pos, score) in enumerate(zip(positions, scores), start=1)]
                for positions, scores in found]

    def _top_k(self, vectors: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(id-map positions, scores) of each query's top-k vectors, best first."""
        if k == 0:
            return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(len(vectors))]
        scores, labels = self.index.search(vectors, k)
        positions = np.searchsorted(self._faiss_ids, labels)
        return [(positions[q][labels[q] >= 0], scores[q][labels[q] >= 0]) for q in range(len(vectors))]

    def _best_passage_per_document(self, vectors: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(id-map positions of the best passages, their scores) of each query's top-k documents,
        a document scoring its best passage. Asks the index for k * OVERFETCH passages; a query
        whose passages came from fewer than k documents asks again, for as many more as the
        documents found so far suggest (at least twice as many), while the index has more."""
        found: list = [None] * len(vectors)
        pending, fetch = np.arange(len(vectors)), min(self.index.ntotal, k * OVERFETCH)
        while len(pending):
            short, wanted = [], 2 * fetch
            for q, (positions, scores) in zip(pending, self._top_k(vectors[pending], fetch)):
                # the index answers best first: a document's first passage in the list is its best
                _, first = np.unique(self._doc_codes[positions], return_index=True)
                best = np.sort(first)[:k]
                found[q] = (positions[best], scores[best])
                exhausted = fetch >= self.index.ntotal or len(positions) < fetch  # nothing more to find
                if len(best) < k and not exhausted:
                    short.append(q)
                    # passages per document found so far, times k documents, and half again
                    wanted = max(wanted, int(1.5 * fetch * k / len(best)))
            pending, fetch = np.array(short, dtype=np.int64), min(self.index.ntotal, wanted)
        return found

    def _hit(self, rank: int, pos: int, score: float, stored: dict, grouping: str | None) -> Hit:
        id_ = self._ids[pos].as_py()
        if not self.chunked:
            return Hit(rank, id_, score, stored.get("text"))
        doc_id = self._doc_ids[pos].as_py()
        return Hit(rank, doc_id if grouping == "doc" else id_, score, stored.get("text"), doc_id=doc_id,
                   passage_id=id_, **{name: stored.get(name) for name in SPAN_COLUMNS})

    def _stored(self, positions: np.ndarray, columns: list[str]) -> dict[int, dict]:
        """{id-map position: {column: value}} of stored vectors columns (text, passage spans),
        reading only the row groups that hold the given positions."""
        if not columns or not len(positions):
            return {}
        wanted: dict[str, dict[int, int]] = {}
        for pos in set(int(p) for p in positions):
            wanted.setdefault(self._files[pos].as_py(), {})[int(self._rows[pos])] = pos
        values: dict[int, dict] = {}
        for file, rows in wanted.items():
            parquet = pq.ParquetFile(inside(self.version_dir, file))
            starts = np.cumsum([0] + [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)])
            for group in sorted({int(np.searchsorted(starts, r, side="right") - 1) for r in rows}):
                table = parquet.read_row_group(group, columns=columns)
                for row, pos in rows.items():
                    if starts[group] <= row < starts[group + 1]:
                        values[pos] = {name: table.column(name)[row - int(starts[group])].as_py() for name in columns}
        return values


def _read_part(version_dir: Path, name: str, read):
    """One file of a version, read with `read(path)`; a missing or unreadable one is a
    DamagedOutputError naming it."""
    path = inside(version_dir, name)
    if not path.is_file():
        raise DamagedOutputError(f"{path} is missing: version {version_dir.name} is incomplete; {REPAIR}")
    try:
        return read(path)
    except Exception as err:  # noqa: BLE001 - faiss, pyarrow and json each raise their own types
        raise DamagedOutputError(f"{path} cannot be read ({type(err).__name__}: {' '.join(str(err).split())[:200]}): "
                                 f"the output is damaged; {REPAIR}") from err


def search(output: str | Path, query: str, k: int = 10, instruction: str | None = None, *, encoder=None,
           group_by: str | None = None) -> list[Hit]:
    """One query against the published version of `output` (loads everything: for many queries
    keep a `CorpusIndex`)."""
    return CorpusIndex.open(output, encoder=encoder).search(query, k, instruction, group_by=group_by)[0]


def _load_encoder(manifest: dict, device: str | None, model: str | None = None):
    from l2v_core import Encoder

    source = manifest["encoder"]["source"]
    settings = manifest["encoder"]["settings"]
    model = model or (None if source == "default" else source)
    if model is not None and Path(model).is_absolute() and not Path(model).exists():
        raise FileNotFoundError(
            f"the encoder {model} is gone; pass model=PATH of a copy of the same weights "
            f"(jobs/search.py --model PATH)"
        )
    return Encoder.from_pretrained(model, device=device, max_length=settings["max_length"],
                                   pooling=settings["pooling"], bidirectional=settings["bidirectional"])


def _check_identity(actual: dict, manifest: dict) -> None:
    expected = manifest["encoder"]["identity"]
    if actual != expected:
        differs = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
        raise ValueError(
            f"the encoder differs from the one that built version {manifest['version']} in {', '.join(differs)}: "
            "its vectors cannot be searched with it. "
            f"Load the encoder named in the manifest ({manifest['encoder']['source']})."
        )
