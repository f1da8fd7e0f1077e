"""Small corpora and configs for the embedding tests (tiny encoder, local Ray, 2 CPUs)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.embed import EmbedConfig

TOPICS = ["cats", "ships", "rivers", "algebra", "bread", "violins", "glaciers", "chess", "tulips", "comets"]


def clean_texts(n: int) -> list[str]:
    """n distinct short texts."""
    return [f"Note {i}: a few words on {TOPICS[i % len(TOPICS)]} and {TOPICS[(i * 7 + 3) % len(TOPICS)]}, "
            f"item {i * 13}."
            for i in range(n)]


def write_corpus(folder: Path, n: int = 40, files: int = 2, prefix: str = "doc") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    texts = clean_texts(n)
    per = (n + files - 1) // files
    for f in range(files):
        rows = range(f * per, min(n, (f + 1) * per))
        pq.write_table(pa.table({"id": [f"{prefix}{i}" for i in rows], "text": [texts[i] for i in rows]}),
                       folder / f"part-{f}.parquet")
    return folder


def small_config(corpus: Path, output: Path, encoder_dir: Path, **overrides) -> EmbedConfig:
    settings = dict(input=[str(corpus)], output=str(output), model=str(encoder_dir), num_actors=1, cpu_threads=1,
                    batch_size=16, tokenize_batch_size=16, batch_tokens=512, recall_queries=20)
    settings.update(overrides)
    return EmbedConfig(**settings)
