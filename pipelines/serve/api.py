"""The HTTP contract: request parsing and validation, error bodies, response bodies.

Every refusal is an ApiError with a 4xx status and an OpenAI-style body
({"error": {"message", "type", "param", "code"}}): the openai client shows `message` as is.
Nothing here knows about Ray; the deployment (app.py) calls these functions.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code or {400: "invalid_request", 401: "invalid_api_key", 404: "not_found",
                             405: "method_not_allowed", 413: "request_too_large",
                             503: "unavailable"}.get(status, "error")

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        if self.status == 401:
            kind = "authentication_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    max_k: int
    max_inputs: int


@dataclass(frozen=True)
class SearchRequest:
    queries: tuple[str, ...]
    k: int
    instruction: str | None  # None: the encoder's query instruction
    group_by: str | None = None  # "doc" | "passage" on a chunked index; None: "doc" there (no effect unchunked)


@dataclass(frozen=True)
class EmbeddingRequest:
    inputs: tuple[str, ...]
    model: str
    encoding_format: str  # "float" or "base64"
    instruction: str | None  # None: by input_type
    input_type: str  # "document" (the index's instruction) or "query" (the encoder's query instruction)
    dimensions: int | None


class _SearchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: StrictStr | None = None
    queries: list[StrictStr] | None = None
    k: StrictInt = 10
    instruction: StrictStr | None = None
    group_by: Literal["doc", "passage"] | None = None


class _EmbeddingBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: Any  # checked by hand in parse_embeddings, for clearer messages than a union's
    model: StrictStr
    encoding_format: Literal["float", "base64"] = "float"
    instruction: StrictStr | None = None
    input_type: Literal["document", "query"] = "document"
    dimensions: StrictInt | None = Field(None)
    user: StrictStr | None = None  # accepted (OpenAI clients may send it), not used


def parse_json_object(body: bytes) -> dict:
    if not body.strip():
        raise ApiError(400, "the request body is empty: send a JSON object")
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(value).__name__}")
    return value


def parse_search(body: dict, limits: Limits) -> SearchRequest:
    parsed = _validate(_SearchBody, body)
    if (parsed.query is None) == (parsed.queries is None):
        raise ApiError(400, "give exactly one of 'query' (a string) or 'queries' (a list of strings)", param="query")
    queries = [parsed.query] if parsed.query is not None else parsed.queries
    _check_texts(queries, "queries" if parsed.queries is not None else "query", limits)
    if not 1 <= parsed.k <= limits.max_k:
        raise ApiError(400, f"k must be between 1 and {limits.max_k}, got {parsed.k}", param="k")
    return SearchRequest(tuple(queries), parsed.k, parsed.instruction, parsed.group_by)


def parse_embeddings(body: dict, limits: Limits) -> EmbeddingRequest:
    parsed = _validate(_EmbeddingBody, body)
    if not isinstance(parsed.input, (str, list)):
        raise ApiError(400, f"'input' must be a string or a list of strings, not {_json_type(parsed.input)}",
                       param="input")
    inputs = [parsed.input] if isinstance(parsed.input, str) else parsed.input
    for i, x in enumerate(inputs):
        if isinstance(x, (int, list)) and not isinstance(x, bool):
            raise ApiError(400, "token arrays are not accepted: send 'input' as a string or a list of strings "
                                "(the service tokenizes with the encoder's own tokenizer)", param="input")
        if not isinstance(x, str):
            raise ApiError(400, f"'input[{i}]' is {_json_type(x)}, not a string", param="input")
    _check_texts(inputs, "input", limits)
    return EmbeddingRequest(tuple(inputs), parsed.model, parsed.encoding_format, parsed.instruction,
                            parsed.input_type, parsed.dimensions)


def _validate(model: type[BaseModel], body: dict):
    try:
        return model.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".") or "body"
        if first["type"] == "extra_forbidden":
            known = ", ".join(model.model_fields)
            raise ApiError(400, f"unknown field '{where}' (known: {known})", param=where) from None
        raise ApiError(
            400, f"'{where}': {first['msg']}", param=str(first["loc"][0]) if first["loc"] else None
        ) from None


def _json_type(value) -> str:
    names = {
        bool: "a boolean", int: "a number", float: "a number", dict: "an object", list: "a list", type(None): "null"
    }
    return names.get(type(value), type(value).__name__)


def _check_texts(texts: list[str], param: str, limits: Limits) -> None:
    if not texts:
        raise ApiError(400, f"'{param}' is empty: give at least one text", param=param)
    if len(texts) > limits.max_inputs:
        raise ApiError(400, f"'{param}' has {len(texts)} texts; at most {limits.max_inputs} per request", param=param)
    for i, text in enumerate(texts):
        if not text.strip():
            where = param if len(texts) == 1 and param == "query" else f"{param}[{i}]"
            raise ApiError(400, f"'{where}' is empty or whitespace: there is nothing to embed", param=param)


def check_auth(authorization: str | None, expected_sha256: str | None) -> None:
    """'Authorization: Bearer KEY' must hash to the configured key's sha256 (when one is set)."""
    import hashlib
    import hmac

    if expected_sha256 is None:
        return
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "missing API key: send 'Authorization: Bearer KEY'")
    given = hashlib.sha256(key.strip().encode()).hexdigest()
    if not hmac.compare_digest(given, expected_sha256):
        raise ApiError(401, "invalid API key")


def embeddings_response(vectors: np.ndarray, request: EmbeddingRequest, model: str, n_tokens: int) -> dict:
    """OpenAI's shape: base64 is the little-endian float32 bytes of each vector."""
    data = []
    for i, vector in enumerate(vectors):
        if request.encoding_format == "base64":
            embedding = base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
        else:
            embedding = [float(x) for x in vector]
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}
