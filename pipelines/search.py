"""Search a published embedding output: the encoder it was built with, its FAISS index, its ids.

    from pipelines.search import CorpusIndex, search
    hits = search("out/index", "how do I read a parquet file?", k=5)
    index = CorpusIndex.open("out/index")           # load once, search many times
    for hit in index.search(["query one", "query two"], k=3)[0]:
        print(hit.rank, hit.score, hit.id, hit.text)

Queries get the encoder's 'query' instruction unless another is given (pass instruction="" for
none). The encoder is loaded from where the manifest says it came from, and its identity must
equal the manifest's: vectors from one model are never searched with another.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq

from pipelines.embed.index_build import apply_search_params
from pipelines.embed.layout import REPAIR, DamagedOutputError, OutputLayout, inside

logger = logging.getLogger(__name__)


@dataclass
class Hit:
    rank: int
    id: str
    score: float
    text: str | None = None

    def to_dict(self) -> dict:
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

    def search(self, queries: str | Sequence[str], k: int = 10, instruction: str | None = None,
               with_text: bool = True) -> list[list[Hit]]:
        """Top-k hits per query (a single string gives a list of one). Arguments are checked
        before the model runs."""
        queries = [queries] if isinstance(queries, str) else list(queries)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        empty = [i for i, q in enumerate(queries) if not isinstance(q, str) or not q.strip()]
        if empty:
            raise ValueError(f"query {empty[0]} (0-based) is empty or not a string: give some text to search for")
        if instruction is None:
            instruction = self.encoder.settings.instructions.get("query")
        vectors = self.encoder.encode(queries, instruction or None, normalize=True)
        return self.search_vectors(vectors, k, with_text=with_text)

    def search_vectors(self, vectors: np.ndarray, k: int = 10, with_text: bool = True) -> list[list[Hit]]:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        k = min(k, self.index.ntotal)
        if k == 0:
            return [[] for _ in range(len(vectors))]
        scores, labels = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        positions = np.searchsorted(self._faiss_ids, labels)
        texts = self._texts(positions[labels >= 0]) if with_text and self.has_text else {}
        results = []
        for q in range(len(vectors)):
            hits = []
            for rank, (label, pos, score) in enumerate(zip(labels[q], positions[q], scores[q]), start=1):
                if label < 0:
                    continue
                hits.append(Hit(rank, self._ids[int(pos)].as_py(), float(score), texts.get(int(pos))))
            results.append(hits)
        return results

    def _texts(self, positions: np.ndarray) -> dict[int, str]:
        """Texts of the given id-map positions, reading only the row groups that hold them."""
        wanted: dict[str, dict[int, int]] = {}
        for pos in set(int(p) for p in positions):
            wanted.setdefault(self._files[pos].as_py(), {})[int(self._rows[pos])] = pos
        texts = {}
        for file, rows in wanted.items():
            parquet = pq.ParquetFile(inside(self.version_dir, file))
            starts = np.cumsum([0] + [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)])
            for group in sorted({int(np.searchsorted(starts, r, side="right") - 1) for r in rows}):
                column = parquet.read_row_group(group, columns=["text"]).column(0)
                for row, pos in rows.items():
                    if starts[group] <= row < starts[group + 1]:
                        texts[pos] = column[row - int(starts[group])].as_py()
        return texts


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


def search(output: str | Path, query: str, k: int = 10, instruction: str | None = None, *, encoder=None) -> list[Hit]:
    """One query against the published version of `output` (loads everything: for many queries
    keep a `CorpusIndex`)."""
    return CorpusIndex.open(output, encoder=encoder).search(query, k, instruction)[0]


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
