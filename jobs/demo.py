"""`make demo`: adapt the default model on a sample corpus made from Python's own docstrings
(LLM2Vec quick profile on Ray Train), embed the corpus with it (Ray Data + FAISS), search it.

    python jobs/demo.py                        # ~200 docs, the whole chain (several minutes on 2 cores)
    python jobs/demo.py --skip-adapt           # embed with the default model as it is (~1 minute)
    python jobs/demo.py --model out/adapt/encoder    # embed with an encoder you adapted before
    python jobs/demo.py --max-docs 1000 --max-length 256

Each step is one function below, called in order by `main`.
Everything lands in demo_out/ (corpus parquet, adapt/ with the encoder, index/ with the versions).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import shutil
import sys
from pathlib import Path

from pipelines.cli import UsageError, job_parser, run_job

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


def step_adapt(corpus: Path, out_dir: Path) -> Path:
    """Step 2: bidirectional -> MNTP -> SimCSE on the corpus itself (jobs/configs/quick.yaml, the
    unsupervised recipe: no labels), each stage a Ray Train run. Returns the encoder folder."""
    from pipelines.train.chain import run_chain
    from pipelines.train.config import load_config

    cfg = load_config(REPO / "jobs" / "configs" / "quick.yaml")
    cfg.simcse.split_sentences = True  # the docstrings are paragraphs: SimCSE trains on their sentences
    print(f"step 2: adapting the default model on {corpus.name} (quick profile: MNTP {cfg.mntp.steps} steps, "
          f"SimCSE {cfg.simcse.steps} steps, {cfg.cluster.num_workers} Ray Train workers)")
    adapt_dir = out_dir / "adapt"
    # Start fresh: the same run name would otherwise resume the previous demo's finished stages.
    shutil.rmtree(adapt_dir, ignore_errors=True)
    summary = run_chain(cfg, corpus=str(corpus), output=adapt_dir)
    for stage in summary["stages"][1:]:
        print(f"  {stage['name']}: {stage['steps']} steps in {stage['wall_time_s']} s, "
              f"final loss {stage['final_loss']:.3f}")
    return Path(summary["encoder"])


def step_embed(corpus: Path, out_dir: Path, model: str | None, max_length: int) -> Path:
    """Step 3: the embedding pipeline (Ray Data) -> a published, versioned index."""
    from pipelines.embed import EmbedConfig, run_embed

    output = out_dir / "index"
    cfg = EmbedConfig(input=[str(corpus)], output=str(output), model=model, title_column="title",
                      max_length=max_length, batch_size=64, keep_versions=2)
    print(f"step 3: embedding with {model or 'the default model (SmolLM2-135M-Instruct)'} -> {output}")
    run_embed(cfg)
    return output


def step_search(output: Path, queries: list[str], k: int = 3) -> None:
    """Step 4: load the published version and its encoder, run a few queries."""
    from pipelines.search import CorpusIndex

    index = CorpusIndex.open(output)
    print(f"step 4: searching version {index.version}")
    for query, hits in zip(queries, index.search(queries, k)):
        print(f"\nquery: {query}")
        for hit in hits:
            snippet = " ".join((hit.text or "").split("\n\n", 1)[-1].split())[:90]
            print(f"  {hit.rank}. {hit.score:.3f}  {hit.id:<32} {snippet}")


def run(argv=None) -> int:
    p = job_parser(__doc__)
    p.add_argument("--model", default=None, help="embed with this encoder folder (skips adapting)")
    p.add_argument("--skip-adapt", action="store_true", help="embed with the default model as it is")
    p.add_argument("--out", default=str(REPO / "demo_out"))
    p.add_argument("--max-docs", type=int, default=200)
    p.add_argument("--max-length", type=int, default=64, help="tokens per text (small keeps the CPU demo quick)")
    args = p.parse_args(argv)
    if args.model is not None and not Path(args.model).is_dir():
        raise UsageError(f"--model {args.model} is not a folder: give an encoder folder (e.g. demo_out/adapt/encoder)")
    if args.max_docs < 1 or args.max_length < 2:
        raise UsageError("--max-docs must be at least 1 and --max-length at least 2")
    logging.basicConfig(level=logging.WARNING)
    out_dir = Path(args.out)

    import ray

    # address="local": a demo never joins a cluster someone left running on this machine
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    corpus = step_build_corpus(out_dir, args.max_docs)
    model = args.model
    if model is None and not args.skip_adapt:
        model = str(step_adapt(corpus, out_dir))
    output = step_embed(corpus, out_dir, model, args.max_length)
    step_search(output, QUERIES)
    ray.shutdown()
    return 0


def main(argv=None) -> int:
    return run_job(run, argv)


if __name__ == "__main__":
    sys.exit(main())
