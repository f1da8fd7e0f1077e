"""The output folder: versions, the CURRENT pointer, atomic publish, pruning and the run lock.

    OUTPUT/
      CURRENT                      one line: the published version's name
      .lock                        held while a run writes (pid, host, start time; touched every 30 s)
      versions/<name>/             one folder per run
        run.json                   written first: what the vectors are made with (see incremental.py)
        vectors/*.parquet          id, embedding fixed_size_list<float32>[d], content_hash, n_tokens, truncated[, text]
        quarantine.parquet         rows not embedded, with a reason
        index.faiss, id_map.parquet, index_info.json
        manifest.json              written last: a version without it is incomplete

A version is published by writing CURRENT.tmp and renaming it over CURRENT (atomic on POSIX):
readers see the old version or the new one, never a mix. Nothing a run writes lies outside
OUTPUT, and names read back from disk are checked before use.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from ..cli import LockHeldError

logger = logging.getLogger(__name__)

CURRENT = "CURRENT"
VERSIONS = "versions"
MANIFEST = "manifest.json"
VECTORS = "vectors"  # in every version folder: the vectors parquet files
QUARANTINE_FILE = "quarantine.parquet"  # in every version folder: the rows not embedded, with a reason
LOCK = ".lock"
HEARTBEAT_S = 30  # a running job touches its lock this often
STALE_AFTER_S = 600  # a lock whose heartbeat stopped this long ago is stale, whatever its host
VERSION_NAME = re.compile(r"^\d{8}T\d{6}\d{6}Z-[0-9a-f]{6}$")


class LockedError(LockHeldError):
    """Another run holds the output's lock (jobs exit with code 3)."""


class NoPublishedVersionError(FileNotFoundError):
    """The output folder has no published version yet."""


class DamagedOutputError(ValueError):
    """CURRENT, the version it names or that version's manifest cannot be read."""


# What to do about a damaged published version: a full run never needs it.
REPAIR = ("a full run (jobs/embed_corpus.py or l2v-embed, without --incremental) embeds everything again "
          "and publishes a whole new version")


def vector_files_of(version_dir: Path) -> list[Path]:
    """A version's vectors parquet files, sorted by name."""
    return vector_files_in(Path(version_dir) / VECTORS)


def vector_files_in(folder: Path) -> list[Path]:
    """The vectors parquet files of a vectors folder, sorted by name: the order faiss ids follow."""
    folder = Path(folder)
    return sorted(folder.glob("*.parquet")) if folder.is_dir() else []


def inside(root: Path, *parts: str) -> Path:
    """root/parts, refusing anything that would resolve outside root ('..', absolute parts, links)."""
    root = Path(root).resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise ValueError(f"path {'/'.join(parts)!r} escapes the output root {root}")
    return path


class OutputLayout:
    def __init__(self, root: str | os.PathLike):
        if "://" in str(root):
            raise ValueError(f"--output must be a local or shared (NFS) folder, not {root}: publishing renames a file")
        self.root = Path(root).expanduser().resolve()
        existing = next(p for p in (self.root, *self.root.parents) if p.exists())
        if not existing.is_dir():
            raise ValueError(f"{existing} is a file, so {self.root} cannot be an output folder: "
                             f"name a folder (it is created when missing)")

    # -------------------------------------------------------------- versions
    @property
    def versions_dir(self) -> Path:
        return self.root / VERSIONS

    def version_dir(self, name: str) -> Path:
        if not VERSION_NAME.match(name):
            raise ValueError(f"{name!r} is not a version name (expected like 20260101T000000000000Z-ab12cd)")
        return inside(self.root, VERSIONS, name)

    def new_version(self) -> tuple[str, Path]:
        """A fresh, empty version folder (names sort by creation time)."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"{stamp}-{uuid.uuid4().hex[:6]}"
        path = self.version_dir(name)
        path.mkdir(parents=True, exist_ok=False)
        return name, path

    def versions(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if VERSION_NAME.match(p.name) and p.is_dir())

    def is_complete(self, name: str) -> bool:
        return (self.version_dir(name) / MANIFEST).is_file()

    # -------------------------------------------------------------- CURRENT
    def current(self) -> str | None:
        """The published version's name, or None before the first publish. Raises
        DamagedOutputError, naming the file, when CURRENT does not lead to a complete version."""
        path = self.root / CURRENT
        if not path.is_file():
            return None
        name = path.read_text(errors="replace").strip()
        if not name:
            raise DamagedOutputError(f"{path} is empty: the output is damaged; {REPAIR}")
        if not VERSION_NAME.match(name):
            raise DamagedOutputError(f"{path} holds {name[:80]!r}, which is not a version name: the output is "
                                     f"damaged; {REPAIR}")
        version = self.version_dir(name)
        if not version.is_dir():
            raise DamagedOutputError(f"{path} names {name}, but the folder {version} is missing: the output is "
                                     f"damaged; {REPAIR}")
        if not (version / MANIFEST).is_file():
            raise DamagedOutputError(f"{path} names {name}, but {version / MANIFEST} is missing: the output is "
                                     f"damaged; {REPAIR}")
        return name

    def current_dir(self) -> Path:
        name = self.current()
        if name is None:
            raise NoPublishedVersionError(
                f"{self.root} has no published version (no {CURRENT} file): "
                f"run jobs/embed_corpus.py --output {self.root} first"
            )
        return self.version_dir(name)

    def read_manifest(self, name: str | None = None) -> dict:
        """A version's manifest (the published one by default); DamagedOutputError names the file
        when it cannot be read."""
        path = (self.version_dir(name) if name else self.current_dir()) / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise DamagedOutputError(f"{path} is missing: the version is incomplete; {REPAIR}") from None
        except (OSError, ValueError) as err:
            raise DamagedOutputError(f"{path} is not valid JSON ({err}): the output is damaged; {REPAIR}") from None
        if not isinstance(manifest, dict):
            raise DamagedOutputError(f"{path} is not a manifest (not a JSON object): the output is damaged; {REPAIR}")
        return manifest

    def write_manifest(self, name: str, manifest: dict) -> Path:
        """Write a version's manifest atomically (tmp + fsync + rename): whole or absent. Written last."""
        version_dir = self.version_dir(name)
        path = version_dir / MANIFEST
        tmp = version_dir / f".{MANIFEST}.tmp"
        with open(tmp, "w") as fh:
            json.dump(manifest, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path

    def publish(self, name: str) -> None:
        """Atomically point CURRENT at `name` (which must be complete)."""
        if not self.is_complete(name):
            raise RuntimeError(f"refusing to publish {name}: it has no {MANIFEST} (incomplete)")
        tmp = self.root / f".{CURRENT}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "w") as fh:
            fh.write(name + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.root / CURRENT)
        _fsync_dir(self.root)
        logger.info("published %s", name)

    def prune(self, keep: int, *, writing: str | None = None) -> list[str]:
        """Delete complete versions beyond the newest `keep` (never the published one) and
        incomplete leftovers of crashed runs (never the one being written). Call under the lock."""
        current = self.current()
        complete = [v for v in self.versions() if self.is_complete(v)]
        keep_set = set(complete[-keep:]) | {current, writing}
        removed = [v for v in self.versions() if v not in keep_set]
        for name in removed:
            shutil.rmtree(self.version_dir(name), ignore_errors=True)
        if removed:
            logger.info("pruned %d old or incomplete version(s): %s", len(removed), ", ".join(removed))
        return removed

    # -------------------------------------------------------------- lock
    @contextmanager
    def lock(self):
        """Only one run writes an output at a time. A lock left by a dead process on this host
        is stale and taken over; a live one makes this run refuse with LockedError."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK
        token = acquire_lock(path)
        stop = threading.Event()
        threading.Thread(target=_heartbeat, args=(path, stop), daemon=True, name="l2v-lock-heartbeat").start()
        try:
            yield
        finally:
            stop.set()
            release_lock(path, token)


def _heartbeat(path: Path, stop: threading.Event) -> None:
    """Touch the lock while the run lives: a holder on another host (a new head pod every night
    under KubeRay) can only be judged by this, since its pid cannot be checked from here."""
    while not stop.wait(HEARTBEAT_S):
        try:
            os.utime(path)
        except OSError:
            pass


def acquire_lock(path: Path) -> str:
    token = uuid.uuid4().hex
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "token": token}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if holder is None and _age_s(path) < 10:
                holder = {"pid": "?", "host": "?", "started": time.time()}  # being written right now
            if holder is not None and not _is_stale(holder, _age_s(path)):
                raise LockedError(
                    f"{path.parent} is being written by pid {holder.get('pid')} on {holder.get('host')} since "
                    f"{datetime.fromtimestamp(holder.get('started', 0), timezone.utc):%Y-%m-%d %H:%M:%S} UTC; "
                    f"wait for it to finish (a lock counts as stale once its heartbeat has stopped for "
                    f"{STALE_AFTER_S // 60} minutes; if its run is gone from another host, delete {path} to go on now)"
                ) from None
            logger.warning("removing a stale lock %s left by %s", path, holder)
            _remove_stale(path, holder)
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh)
        return token
    raise LockedError(f"could not take the lock {path}; another run is starting at the same moment")


def _remove_stale(path: Path, holder: dict | None) -> None:
    """Move the stale lock aside atomically, then check it is the one judged stale: a faster run
    may have taken it over and written its own since we read it (unlinking blindly would then
    let two runs hold the lock)."""
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another run removed it first; the caller tries to create its own again
    moved = _read_lock(aside)
    if moved is not None and moved != holder:
        try:
            os.link(aside, path)  # put the live lock back (fails if yet another one exists)
        except OSError:
            pass
        aside.unlink(missing_ok=True)
        raise LockedError(f"{path.parent} was just taken over by another run "
                          f"(pid {moved.get('pid')} on {moved.get('host')}); wait for it to finish")
    aside.unlink(missing_ok=True)


def release_lock(path: Path, token: str) -> None:
    holder = _read_lock(path)
    if holder is not None and holder.get("token") == token:
        path.unlink(missing_ok=True)


def _read_lock(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable or half-written: treated as stale


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return float("inf")


def _is_stale(holder: dict, age_s: float) -> bool:
    if age_s > STALE_AFTER_S:
        return True  # no heartbeat: the run is gone (another host's pid cannot be checked; a pid may be reused)
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    return False


def sync_tree(folder: Path) -> None:
    """Flush every file under `folder` (and the folders' entries) to disk: the manifest and
    CURRENT are written after this, so a power loss cannot leave them naming truncated data."""
    for path in sorted(folder.rglob("*"), reverse=True):  # files before the folders holding them
        if path.is_dir():
            _fsync_dir(path)
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
