"""Online search and OpenAI-compatible embeddings over a published index, on Ray Serve.

    from pipelines.serve import ServiceConfig, build_app
    serve.run(build_app(ServiceConfig(index="out/index")))

Modules: config (settings), api (HTTP contract, validation), holder (follows CURRENT, swaps
atomically), batcher (shared forward passes), page (the search page), app (the deployment).
"""

from .config import ServiceConfig


def build_app(args):
    """See app.build_app (imported lazily: the API parts do not need Ray Serve installed)."""
    from .app import build_app as _build_app

    return _build_app(args)


__all__ = ["ServiceConfig", "build_app"]
