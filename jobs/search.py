"""Search the published version of an embedding output.

    l2v-search --index out/index --query "how do I read a parquet file?" --k 5
    python jobs/search.py --index out/index --query "first" --query "second" --json

The encoder named in the version's manifest is loaded (pass --model to point at a moved copy of
the same weights). Queries get the encoder's 'query' instruction unless --instruction is given
(--instruction "" for none). Plain output is one line per hit; an id with a newline or another
invisible character is shown quoted and escaped ('a\\nb'); --json gives ids exactly.

An index built with --chunk-tokens holds passages: hits are documents by default (--group-by
doc: each document scores its best passage and shows that passage's chunk number, character
span in the document and text); --group-by passage lists the passages themselves. An index
without chunking answers the same either way.

On a cluster (the index folder on shared storage):
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/search.py --index /shared/index --query "..." --json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipelines.cli import UsageError, job_parser, run_job

EXIT_CODES = {
    2: "bad arguments (--k below 1, an empty query), or no whole published version in --index: no "
       "CURRENT, a damaged CURRENT, manifest or index file (the message names it), an encoder that "
       "differs from the index's",
}


def parse_args(argv=None):
    p = job_parser(__doc__, exit_codes=EXIT_CODES)
    p.add_argument("--index", required=True, help="output folder of jobs/embed_corpus.py (l2v-embed)")
    p.add_argument("--query", action="append", required=True, help="query text (repeat for several)")
    p.add_argument("--k", type=int, default=10, help="hits per query")
    p.add_argument("--instruction", default=None,
                   help="instruction before each query (default: the encoder's 'query' one)")
    p.add_argument("--model", help="encoder folder, when it moved since the index was built")
    p.add_argument("--group-by", choices=["doc", "passage"], default=None,
                   help="on a chunked index: one hit per document (its best passage) or per passage "
                        "(default: doc; an unchunked index has one vector per document either way)")
    p.add_argument("--json", action="store_true", help="one JSON object per query")
    args = p.parse_args(argv)
    if args.k < 1:
        raise UsageError(f"--k must be at least 1, got {args.k}")
    for number, query in enumerate(args.query, start=1):
        if not query.strip():
            raise UsageError(f"query {number} is empty: give some text to search for")
    if not Path(args.index).is_dir():
        raise UsageError(f"--index {args.index} is not a folder: give the --output folder of l2v-embed "
                         f"(jobs/embed_corpus.py)")
    return args


def format_hit(hit) -> str:
    """One line per hit: an id with a newline or another unprintable character is shown as its
    Python literal ('a\\nb'), so a hit never spans two lines or hides its id."""
    shown_id = hit.id if hit.id.isprintable() else repr(hit.id)
    passage = "" if hit.chunk is None else f"  [passage {hit.chunk}, chars {hit.char_start}-{hit.char_end}]"
    text = "" if hit.text is None else "  " + " ".join(hit.text.split())[:100]
    return f"  {hit.rank:>2}. {hit.score:.4f}  {shown_id}{passage}{text}"


def run(argv=None) -> int:
    args = parse_args(argv)  # checked before anything heavy is imported or loaded
    from pipelines.search import CorpusIndex

    try:
        index = CorpusIndex.open(args.index, model=args.model)
    except ValueError as err:  # a damaged output or another encoder: the message names it and the fix
        raise UsageError(str(err)) from err
    grouping = index.grouping(args.group_by)  # None: an unchunked index
    for query, hits in zip(args.query, index.search(args.query, args.k, args.instruction, group_by=args.group_by)):
        if args.json:
            line = {"query": query, "version": index.version} | ({"group_by": grouping} if grouping else {})
            print(json.dumps(line | {"hits": [h.to_dict() for h in hits]}))
            continue
        print(f"\nquery: {query}")
        for hit in hits:
            print(format_hit(hit))
    return 0


def main(argv=None) -> int:
    return run_job(run, argv)


if __name__ == "__main__":
    sys.exit(main())
