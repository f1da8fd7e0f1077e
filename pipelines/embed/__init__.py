"""The corpus embedding pipeline: parquet -> validated rows -> vectors parquet -> FAISS index,
published atomically as a new version of an output folder. See docs/embed.md.

The names below load on first use: `jobs/embed_corpus.py` reads EmbedConfig (its --help shows the
config's defaults) and rejects bad arguments without importing Ray, pyarrow's dataset layer or torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BadFileError": ".plan",
    "DamagedOutputError": ".layout",
    "EmbedConfig": ".config",
    "EmbedResult": ".run",
    "LockedError": ".layout",
    "MissingColumnsError": ".scan",
    "NoPublishedVersionError": ".layout",
    "OutputLayout": ".layout",
    "format_summary": ".run",
    "parse_size": ".config",
    "run_embed": ".run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
