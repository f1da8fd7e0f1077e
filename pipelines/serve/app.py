"""The Ray Serve application: one deployment that routes HTTP, batches encoding and searches.

Each replica holds an IndexHolder (the published version, followed in the background) and its
encoder. Concurrent requests share forward passes through @serve.batch. Build it with
`build_app(config)`; `serve run pipelines.serve:build_app index=out/index` and a Serve config
file (`import_path: pipelines.serve:build_app`, `args: {index: ...}`) use the same function.
"""

from __future__ import annotations

import asyncio
import logging
import os

from ray import serve
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from .api import ApiError, Limits, check_auth, embeddings_response, parse_embeddings, parse_json_object, parse_search
from .batcher import EncodeJob, encode_jobs
from .config import ServiceConfig
from .holder import IndexHolder, Served
from .page import PAGE

logger = logging.getLogger("ray.serve")

VERSION_HEADER = "X-L2V-Version"
ROUTES = {"/": "GET", "/health": "GET", "/search": "POST", "/v1/embeddings": "POST", "/v1/models": "GET"}


@serve.deployment(name="l2v-search")
class SearchService:
    def __init__(self, config: dict, api_key_sha256: str | None):
        self.config = ServiceConfig.model_validate(config)
        self.api_key_sha256 = api_key_sha256
        self.limits = Limits(max_k=self.config.max_k, max_inputs=self.config.max_inputs)
        if self.config.replica_gpus == 0 and self.config.replica_cpus >= 1:
            import torch

            torch.set_num_threads(int(self.config.replica_cpus))  # not every core of the node
        self._encode_batch.set_max_batch_size(self.config.max_batch_size)
        self._encode_batch.set_batch_wait_timeout_s(self.config.batch_wait_ms / 1000)
        self.holder = IndexHolder(self.config.index, model=self.config.model, poll_s=self.config.poll_s)

    # ------------------------------------------------------------------ batching
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _encode_batch(self, jobs: list[EncodeJob]):
        # the forward passes run in a thread: the replica keeps parsing the next requests meanwhile
        return await asyncio.to_thread(encode_jobs, jobs, self.config.batch_tokens, self.config.max_padding)

    # ------------------------------------------------------------------ routing
    async def __call__(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except ApiError as e:
            return JSONResponse(e.body(), status_code=e.status)
        except Exception:
            logger.exception("internal error on %s %s", request.method, request.url.path)
            error = ApiError(500, "internal error; the service's log has the details", code="internal_error")
            return JSONResponse(error.body(), status_code=500)

    async def _route(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/"
        method = ROUTES.get(path)
        if method is None:
            raise ApiError(404, f"no such path {path}; try POST /search, POST /v1/embeddings, GET /health or GET /")
        if request.method != method and not (method == "GET" and request.method == "HEAD"):
            raise ApiError(405, f"{path} takes {method}, not {request.method}")
        if path == "/":
            return HTMLResponse(PAGE)  # the page holds no data; its calls carry the key
        check_auth(request.headers.get("authorization"), self.api_key_sha256)
        if path == "/health":
            return self._health()
        if path == "/v1/models":
            return JSONResponse({"object": "list", "data": [{"id": self.config.served_model_name, "object": "model",
                                                             "owned_by": "l2v-ray"}]})
        body = parse_json_object(await self._read_body(request))
        served = self._served()
        if path == "/search":
            content = await self._search(served, body)
        else:
            content = await self._embeddings(served, body)
        return JSONResponse(content, headers={VERSION_HEADER: served.version})

    async def _read_body(self, request: Request) -> bytes:
        cap = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise ApiError(413, f"the request body has {declared} bytes; at most {cap}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise ApiError(413, f"the request body is over {cap} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _served(self) -> Served:
        served = self.holder.served
        if served is None:
            error = self.holder.last_error
            detail = f" (last error: {error.error})" if error else ""
            raise ApiError(503, f"no version of {self.config.index} is loaded yet{detail}; see GET /health")
        return served

    # ------------------------------------------------------------------ endpoints
    async def _search(self, served: Served, body: dict) -> dict:
        request = parse_search(body, self.limits)
        instruction = served.query_instruction if request.instruction is None else request.instruction
        batch = self._tokenize(served, request.queries, instruction, "queries")
        vectors = await self._encode_batch(EncodeJob(served.encoder, batch))
        results = await asyncio.to_thread(served.index.search_vectors, vectors, request.k,
                                          group_by=request.group_by)
        grouping = served.index.grouping(request.group_by)  # None: an unchunked index, hits as they always were
        return {"version": served.version, "k": request.k} | ({"group_by": grouping} if grouping else {}) | {
            "results": [{"query": q, "hits": [h.to_dict() for h in hits]} for q, hits in zip(request.queries, results)]}

    async def _embeddings(self, served: Served, body: dict) -> dict:
        request = parse_embeddings(body, self.limits)
        name = self.config.served_model_name
        if request.model != name:
            raise ApiError(404, f"the model {request.model!r} is not served here; this service serves {name!r}",
                           param="model", code="model_not_found")
        if request.dimensions is not None and request.dimensions != served.encoder.dim:
            raise ApiError(400, f"'dimensions' must be {served.encoder.dim} (the encoder's size) or left out, "
                                f"got {request.dimensions}", param="dimensions")
        if request.instruction is not None:
            instruction = request.instruction
        elif request.input_type == "query":
            instruction = served.query_instruction
        else:
            instruction = served.document_instruction
        batch = self._tokenize(served, request.inputs, instruction, "input")
        vectors = await self._encode_batch(EncodeJob(served.encoder, batch))
        return embeddings_response(vectors, request, name, sum(batch.n_tokens))

    @staticmethod
    def _tokenize(served: Served, texts, instruction: str | None, param: str):
        try:
            return served.encoder.tokenize(list(texts), instruction or None)
        except (TypeError, ValueError) as e:  # e.g. an instruction that leaves no room for the text
            raise ApiError(400, str(e), param=param) from None

    def _health(self) -> JSONResponse:
        served, error = self.holder.served, self.holder.last_error
        body = {
            "status": (
                "no_version" if served is None
                else ("ok" if self.holder.published == served.version else "degraded")
            ),
            "published": self.holder.published,
            "last_reload_error": (
                None if error is None else {"version": error.version, "error": error.error, "at": error.at}
            ),
            "model": self.config.served_model_name,
            "batching": {"max_batch_size": self.config.max_batch_size, "batch_wait_ms": self.config.batch_wait_ms,
                         "batch_tokens": self.config.batch_tokens, "max_padding": self.config.max_padding},
            "replica": {"pid": os.getpid()},
        }
        if served is not None:
            manifest = served.index.manifest
            body.update({
                "version": served.version,
                "vectors": int(served.index.index.ntotal),
                "dim": served.encoder.dim,
                "index_type": manifest["index"]["factory"],
                "chunking": manifest.get("chunking"),  # set: the vectors are passages, search groups them
                "encoder": {"source": manifest["encoder"]["source"], "identity": served.identity,
                            "device": str(served.encoder.device),
                            "dtype": str(served.encoder.dtype).replace("torch.", "")},
                "query_instruction": served.query_instruction,
                "document_instruction": served.document_instruction,
                "loaded_at": served.loaded_at,
                "load_s": round(served.load_s, 3),
            })
        else:
            body["version"] = None
        return JSONResponse(body, status_code=200 if served is not None else 503)


def build_app(args: dict | ServiceConfig) -> serve.Application:
    """The application for `serve.run`, `serve run pipelines.serve:build_app index=DIR` or a config
    file's `args`. Reads the API key's environment variable here (only its hash reaches replicas)."""
    config = args if isinstance(args, ServiceConfig) else ServiceConfig.model_validate(args)
    return SearchService.options(
        num_replicas=config.replicas,
        max_ongoing_requests=config.max_ongoing_requests(),
        ray_actor_options={"num_cpus": config.replica_cpus, "num_gpus": config.replica_gpus},
    ).bind(config.model_dump(), config.api_key_sha256())
