"""Find the parquet files of a corpus: a file, a folder, a glob, or any URI pyarrow understands.
Shared by the embed pipeline and the training corpus reader."""

from __future__ import annotations

import fnmatch
import glob as globlib
import posixpath
from pathlib import Path

import pyarrow.fs as pafs

_HIDDEN = ("_", ".")


def filesystem_of(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI such as s3://bucket/key."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    return pafs.FileSystem.from_uri(uri)


def _as_uri(fs: pafs.FileSystem, path: str, original: str) -> str:
    """A string that `filesystem_of` turns back into (fs, path)."""
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    scheme = original.split("://", 1)[0]
    return f"{scheme}://{path}"


def list_parquet_files(inputs: list[str]) -> list[str]:
    """Every parquet file named by `inputs`, sorted and deduplicated. Folders are searched
    recursively (names starting with '_' or '.' are skipped); globs may use * ? [] and **."""
    found: set[str] = set()
    for item in inputs:
        matches = _expand(item)
        if not matches:
            raise FileNotFoundError(
                f"input {item!r} matched no parquet file; give a .parquet file, a folder holding some, or a glob"
            )
        found.update(matches)
    return sorted(found)


def _expand(item: str) -> list[str]:
    """An existing path is taken literally before any glob expansion: a folder named
    `corp[1]` is that folder, not the glob that would match `corp1`."""
    has_glob = any(ch in item for ch in "*?[")
    info = _info(item) if has_glob else None
    if has_glob and (info is None or info.type == pafs.FileType.NotFound):
        if "://" not in item:
            paths = globlib.glob(str(Path(item).expanduser()), recursive=True)
            return [p for path in paths for p in _expand(str(Path(path).resolve()))]
        return _expand_remote_glob(item)
    fs, path = filesystem_of(item)
    info = info or fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [_as_uri(fs, path, item)]
    if info.type == pafs.FileType.Directory:
        selector = pafs.FileSelector(path, recursive=True)
        return [
            _as_uri(fs, f.path, item)
            for f in fs.get_file_info(selector)
            if f.type == pafs.FileType.File and f.path.endswith(".parquet") and not _hidden(f.path, path)
        ]
    return []


def _info(item: str) -> pafs.FileInfo | None:
    """What the path names literally, or None when it cannot be asked (a glob is no valid URI)."""
    try:
        fs, path = filesystem_of(item)
        return fs.get_file_info(path)
    except Exception:  # noqa: BLE001 - pyarrow raises several types for a pattern it cannot parse
        return None


def _expand_remote_glob(item: str) -> list[str]:
    """s3://bucket/corpus/*.parquet: list the part before the first wildcard, then match."""
    scheme, rest = item.split("://", 1)
    base = rest[: min(rest.index(ch) for ch in "*?[" if ch in rest)].rsplit("/", 1)[0]
    fs, root = pafs.FileSystem.from_uri(f"{scheme}://{base}")
    pattern = posixpath.join(root, rest[len(base):].lstrip("/"))
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return [f"{scheme}://{f.path}" for f in infos if f.type == pafs.FileType.File and fnmatch.fnmatch(f.path, pattern)]


def _hidden(path: str, root: str) -> bool:
    relative = posixpath.relpath(path, root) if not path.startswith("\\") else path
    return any(part.startswith(_HIDDEN) for part in relative.replace("\\", "/").split("/"))
