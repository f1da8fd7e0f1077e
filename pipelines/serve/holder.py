"""The served version: follows CURRENT, loads a new version in the background, swaps atomically.

A request takes `holder.served` once and uses that snapshot (index, id map, encoder) to the
end, so a swap never mixes two versions inside one answer, and requests in flight finish on the
version they started on. A new version is loaded completely and checked (files readable, dims
and counts consistent, one probe query end to end) before it replaces the old one; a version that
fails is refused: the old one keeps serving and the error is kept for /health.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipelines.embed.layout import OutputLayout, inside
from pipelines.search import CorpusIndex

logger = logging.getLogger(__name__)

RETRY_REFUSED_S = 60.0  # a refused version is tried again after this long (a flaky shared filesystem)
PROBE_QUERY = "probe"


@dataclass(frozen=True)
class Served:
    version: str
    index: CorpusIndex
    identity: dict  # the encoder identity the manifest names
    loaded_at: str
    load_s: float
    encoder_reused: bool

    @property
    def encoder(self):
        return self.index.encoder

    @property
    def query_instruction(self) -> str | None:
        return self.encoder.settings.instructions.get("query")

    @property
    def document_instruction(self) -> str | None:
        """The instruction the index's vectors were made with: /v1/embeddings of a document then
        equals its stored vector."""
        return self.index.manifest["vector_identity"].get("instruction")


@dataclass(frozen=True)
class ReloadError:
    version: str | None
    error: str
    at: str


class IndexHolder:
    def __init__(self, output: str | Path, *, model: str | None = None, device: str | None = None,
                 poll_s: float = 2.0, follow: bool = True):
        self.layout = OutputLayout(output)
        self.model = model
        self.device = device
        self.poll_s = poll_s
        self._served: Served | None = None
        self._last_error: ReloadError | None = None
        self._refused: tuple[str, float] | None = None  # (version, when) of the last refusal
        self._published: str | None = None
        self._lock = threading.Lock()  # one load at a time (the poller and an explicit check())
        self._stop = threading.Event()
        self.check()
        if follow:
            threading.Thread(target=self._follow, daemon=True, name="l2v-index-follow").start()

    @property
    def served(self) -> Served | None:
        return self._served

    @property
    def last_error(self) -> ReloadError | None:
        return self._last_error

    @property
    def published(self) -> str | None:
        """The version CURRENT named at the last check (may differ from the served one when refused)."""
        return self._published

    def stop(self) -> None:
        self._stop.set()

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.check()

    def check(self) -> bool:
        """Load the published version if it is new: True when it was swapped in."""
        with self._lock:
            try:
                name = self.layout.current()
            except Exception as e:  # a damaged CURRENT: keep serving, say so
                self._refuse(None, e)
                return False
            self._published = name
            served = self._served
            if name is None or (served is not None and name == served.version):
                return False
            if self._refused and self._refused[0] == name and time.monotonic() - self._refused[1] < RETRY_REFUSED_S:
                return False
            try:
                new = self._load(name, served)
            except Exception as e:
                self._refuse(name, e)
                return False
            self._served = new  # the swap: one reference assignment
            self._refused = None
            logger.info("now serving version %s (%d vectors; loaded in %.1f s%s)", name, new.index.index.ntotal,
                        new.load_s, ", encoder kept" if new.encoder_reused else "")
            return True

    def _refuse(self, name: str | None, error: Exception) -> None:
        message = f"{type(error).__name__}: {error}"
        self._last_error = ReloadError(name, message, _now())
        if name is not None:
            self._refused = (name, time.monotonic())
        keeps = f"; still serving {self._served.version}" if self._served else ""
        logger.error("refused version %s: %s%s", name or "(CURRENT unreadable)", message, keeps)

    def _load(self, name: str, served: Served | None) -> Served:
        start = time.perf_counter()
        manifest = self.layout.read_manifest(name)
        identity = manifest["encoder"]["identity"]
        reuse = served is not None and served.identity == identity
        index = CorpusIndex.open(self.layout.root, version=name, encoder=served.encoder if reuse else None,
                                 encoder_identity=served.identity if reuse else None, model=self.model,
                                 device=self.device)
        _check_consistent(index, manifest)
        _probe(index, tokenize=not reuse)
        return Served(name, index, identity, _now(), time.perf_counter() - start, reuse)


def _check_consistent(index: CorpusIndex, manifest: dict) -> None:
    dims = {"index": index.index.d, "encoder": index.encoder.dim, "manifest": manifest["vectors"]["dim"]}
    if len(set(dims.values())) != 1:
        raise ValueError(f"dimensions differ: {dims}")
    id_map_rows = pq.ParquetFile(inside(index.version_dir, manifest["index"]["id_map"])).metadata.num_rows
    counts = {"index": index.index.ntotal, "id_map": id_map_rows, "manifest": manifest["index"]["count"]}
    if len(set(counts.values())) != 1:
        raise ValueError(f"vector counts differ: {counts}")


def _probe(index: CorpusIndex, tokenize: bool) -> None:
    """One query through the whole path (encoder, index, id map, stored texts) before serving it.
    A kept encoder is not asked to tokenize here: requests use its tokenizer on another thread,
    and a Rust tokenizer must not be called from two threads at once; a random unit vector
    checks the rest."""
    if tokenize:
        index.search([PROBE_QUERY], k=1)
        return
    vector = np.random.default_rng(0).standard_normal((1, index.index.d)).astype(np.float32)
    index.search_vectors(vector / np.linalg.norm(vector), k=1)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
