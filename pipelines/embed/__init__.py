"""The corpus embedding pipeline: parquet -> validated rows -> vectors parquet -> FAISS index,
published atomically as a new version of an output folder. See docs/embed.md."""

from .config import EmbedConfig, parse_size
from .layout import LockedError, NoPublishedVersionError, OutputLayout
from .ray_steps import BadFileError
from .run import EmbedResult, format_summary, run_embed
from .scan import MissingColumnsError

__all__ = [
    "BadFileError",
    "EmbedConfig",
    "EmbedResult",
    "LockedError",
    "MissingColumnsError",
    "NoPublishedVersionError",
    "OutputLayout",
    "format_summary",
    "parse_size",
    "run_embed",
]
