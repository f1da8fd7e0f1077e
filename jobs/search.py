"""Search the published version of an embedding output.

    python jobs/search.py --index out/index --query "how do I read a parquet file?" --k 5
    python jobs/search.py --index out/index --query "first" --query "second" --json

The encoder named in the version's manifest is loaded (pass --model to point at a moved copy of
the same weights). Queries get the encoder's 'query' instruction unless --instruction is given
(--instruction "" for none).

On a cluster (the index folder on shared storage):
    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/search.py --index /shared/index --query "..." --json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.search import CorpusIndex  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", required=True, help="output folder of jobs/embed_corpus.py")
    p.add_argument("--query", action="append", required=True, help="query text (repeat for several)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--instruction", default=None)
    p.add_argument("--model", help="encoder folder, when it moved since the index was built")
    p.add_argument("--json", action="store_true", help="one JSON object per query")
    args = p.parse_args(argv)
    index = CorpusIndex.open(args.index, model=args.model)
    for query, hits in zip(args.query, index.search(args.query, args.k, args.instruction)):
        if args.json:
            print(json.dumps({"query": query, "version": index.version, "hits": [h.to_dict() for h in hits]}))
            continue
        print(f"\nquery: {query}")
        for hit in hits:
            text = "" if hit.text is None else "  " + " ".join(hit.text.split())[:100]
            print(f"  {hit.rank:>2}. {hit.score:.4f}  {hit.id}{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
