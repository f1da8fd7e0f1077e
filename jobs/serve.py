"""Serve search and OpenAI-compatible embeddings over the published version of an index, on Ray Serve.

    python jobs/serve.py --index out/index                       # http://127.0.0.1:8000/
    curl -s localhost:8000/search -d '{"query": "how do glaciers move?", "k": 3}'
    curl -s localhost:8000/search -d '{"query": "glaciers", "group_by": "passage"}'  # chunked index: passages

The service follows the index: each new version the nightly job publishes is loaded in the
background and swapped in atomically. The same application runs under `serve run` or a Serve
config file (deploy/kuberay/rayservice.yaml):

    serve run pipelines.serve:build_app index=out/index      # or jobs.serve:build_app
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from pipelines.cli import UsageError, job_parser, run_job
from pipelines.serve import build_app  # also importable from here for `serve run` / a Serve config file

EXIT_CODES = {0: "stopped (Ctrl-C or SIGTERM)"}


def parse_args(argv=None) -> argparse.Namespace:
    p = job_parser(__doc__.split("\n\n")[0], exit_codes=EXIT_CODES)
    p.add_argument("--index", required=True,
                   help="output folder of jobs/embed_corpus.py (its CURRENT version is served)")
    p.add_argument("--model", default=None, help="encoder folder, when it moved since the index was built")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (0.0.0.0 to accept other machines: set an API key)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port")
    p.add_argument("--replicas", type=int, default=1, help="Serve replicas (each loads the encoder and index)")
    p.add_argument("--max-batch-size", type=int, default=32, help="requests that share one batch of forward passes")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long a batch waits for more requests")
    p.add_argument("--api-key-env", default=None,
                   help="environment variable holding the API key clients must send as 'Authorization: Bearer KEY'")
    p.add_argument("--served-model-name", default="l2v", help="the model name /v1/embeddings answers to")
    p.add_argument("--poll-s", type=float, default=2.0, help="how often CURRENT is checked for a new version")
    p.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs per replica (also its torch threads)")
    p.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs per replica")
    p.add_argument("--address", default=None,
                   help="Ray cluster to deploy on; none: $RAY_ADDRESS, else a local Ray started for this command")
    return p.parse_args(argv)


def service_config(args: argparse.Namespace):
    """(the validated ServiceConfig, the published version's name), or a UsageError naming the flag."""
    from pydantic import ValidationError

    from pipelines.embed.layout import NoPublishedVersionError, OutputLayout
    from pipelines.serve import ServiceConfig

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, got {args.port}")
    if "://" not in args.index and not Path(args.index).is_dir():
        raise UsageError(f"--index {args.index} is not a folder (give the --output of jobs/embed_corpus.py)")
    try:
        current = OutputLayout(args.index).current_dir()
    except (NoPublishedVersionError, FileNotFoundError, ValueError) as e:
        raise UsageError(f"--index {args.index}: {e}") from None
    if args.model is not None and not Path(args.model).exists():
        raise UsageError(f"--model {args.model} does not exist")
    try:
        config = ServiceConfig(index=str(Path(args.index).resolve()), model=args.model, replicas=args.replicas,
                               max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms,
                               api_key_env=args.api_key_env, poll_s=args.poll_s,
                               served_model_name=args.served_model_name, replica_cpus=args.replica_cpus,
                               replica_gpus=args.replica_gpus)
    except ValidationError as e:
        first = e.errors()[0]
        raise UsageError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    try:
        config.api_key_sha256()
    except ValueError as e:
        raise UsageError(f"--api-key-env: {e}") from None
    return config, current.name


def run(args: argparse.Namespace, config, version: str) -> None:
    import ray
    from ray import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    address = args.address or os.environ.get("RAY_ADDRESS")
    local = address is None
    ray.init(address=address or "local", include_dashboard=False if local else None)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(build_app(config), name="l2v-search", route_prefix="/")
        print(f"serving {config.index} (version {version}) at http://{args.host}:{args.port}/ (Ctrl-C to stop)",
              flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        serve.delete("l2v-search")
        if local:
            serve.shutdown()
    finally:
        ray.shutdown()


def serve_job(argv=None) -> int:
    args = parse_args(argv)
    config, version = service_config(args)
    run(args, config, version)
    return 0


def main(argv=None) -> int:  # [project.scripts] l2v-serve
    return run_job(serve_job, argv)


if __name__ == "__main__":
    sys.exit(main())
