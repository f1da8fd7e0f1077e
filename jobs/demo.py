"""`make demo`: embed a sample corpus made from Python's own docstrings, then search it.

    python jobs/demo.py                       # default model (SmolLM2-135M-Instruct), ~200 docs
    python jobs/demo.py --model out/encoder   # an adapted encoder folder instead
    python jobs/demo.py --max-docs 1000 --max-length 256

Each step is a function; a later step (e.g. adapting the model first) can be put in front by
calling `main(model=...)` or adding a step to STEPS' order in `main`.
Everything lands in demo_out/ (corpus parquet, versioned index output).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]

# Standard-library modules whose docstrings make the sample corpus (fixed, so the corpus is the
# same on every machine running the same Python).
MODULES = [
    "argparse", "array", "base64", "bisect", "bz2", "calendar", "collections", "contextlib", "copy", "csv",
    "datetime", "decimal", "difflib", "enum", "fnmatch", "fractions", "functools", "glob", "gzip", "hashlib",
    "heapq", "hmac", "html", "http.client", "io", "ipaddress", "itertools", "json", "logging", "lzma", "math",
    "mimetypes", "operator", "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "sched", "secrets",
    "shlex", "shutil", "socket", "sqlite3", "statistics", "string", "struct", "subprocess", "tarfile",
    "tempfile", "textwrap", "threading", "time", "timeit", "traceback", "typing", "unittest", "urllib.parse",
    "uuid", "warnings", "weakref", "zipfile", "zlib",
]

QUERIES = [
    "read and write JSON data",
    "compress a file with gzip",
    "match text with a regular expression",
    "pick a random element from a sequence",
    "the current date and time",
    "run another program and capture its output",
]


def step_build_corpus(out_dir: Path, max_docs: int) -> Path:
    """Step 1: one row per documented public module member: id 'module.name', text = the first
    paragraph of its docstring, title = the id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for module_name in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        members = [(module_name, module)] + [
            (f"{module_name}.{name}", obj) for name, obj in sorted(vars(module).items())
            if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj))
            and (getattr(obj, "__module__", None) or module_name).lstrip("_").split(".")[0] == module_name.split(".")[0]
        ]
        for doc_id, obj in members:
            doc = inspect.getdoc(obj)
            if doc and len(doc.split()) >= 4:
                rows.append({"id": doc_id, "title": doc_id, "text": doc.split("\n\n")[0].strip()})
    # spread the sample over all modules rather than taking the first ones
    step = max(1, len(rows) // max_docs)
    rows = rows[::step][:max_docs]
    path = out_dir / "corpus" / "stdlib_docs.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    print(f"step 1: sample corpus of {len(rows)} docstrings from {len(MODULES)} stdlib modules -> {path}")
    return path


def step_embed(corpus: Path, out_dir: Path, model: str | None, max_length: int) -> Path:
    """Step 2: the embedding pipeline (Ray Data) -> a published, versioned index."""
    from pipelines.embed import EmbedConfig, run_embed

    output = out_dir / "index"
    cfg = EmbedConfig(input=[str(corpus)], output=str(output), model=model, title_column="title",
                      max_length=max_length, batch_size=64, keep_versions=2)
    print(f"step 2: embedding with {model or 'the default model (SmolLM2-135M-Instruct)'} -> {output}")
    run_embed(cfg)
    return output


def step_search(output: Path, queries: list[str], k: int = 3) -> None:
    """Step 3: load the published version and its encoder, run a few queries."""
    from pipelines.search import CorpusIndex

    index = CorpusIndex.open(output)
    print(f"step 3: searching version {index.version}")
    for query, hits in zip(queries, index.search(queries, k)):
        print(f"\nquery: {query}")
        for hit in hits:
            snippet = " ".join((hit.text or "").split("\n\n", 1)[-1].split())[:90]
            print(f"  {hit.rank}. {hit.score:.3f}  {hit.id:<32} {snippet}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="embed Python's docstrings and search them")
    p.add_argument("--model", default=None, help="encoder folder (default: the default model)")
    p.add_argument("--out", default=str(REPO / "demo_out"))
    p.add_argument("--max-docs", type=int, default=200)
    p.add_argument("--max-length", type=int, default=64, help="tokens per text (small keeps the CPU demo quick)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out_dir = Path(args.out)

    import ray

    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    corpus = step_build_corpus(out_dir, args.max_docs)
    output = step_embed(corpus, out_dir, args.model, args.max_length)
    step_search(output, QUERIES)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
