"""A real Ray Serve on localhost for the serve tests: a free port, a tiny index, plain HTTP."""

from __future__ import annotations

import json
import shutil
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipelines.embed import OutputLayout

KEY_ENV = "L2V_TEST_SERVE_KEY"
KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict | str
    headers: dict


def call(url: str, path: str, body=None, *, key: str | None = KEY, method: str | None = None,
         headers: dict | None = None, timeout: float = 30) -> Reply:
    """One HTTP request; `body` is a dict (sent as JSON) or raw bytes."""
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    request = urllib.request.Request(url + path, data=data, method=method or ("POST" if data is not None else "GET"))
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, hdrs = response.status, response.read(), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as e:
        status, raw, hdrs = e.code, e.read(), {k.lower(): v for k, v in e.headers.items()}
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = raw.decode(errors="replace")
    return Reply(status, parsed, hdrs)


def wait_for(predicate, timeout: float = 60, every: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def publish_copy(output: Path, source_version_dir: Path, *, keep_name: bool = True) -> str:
    """Copy a complete version folder into `output` and publish it, as a run would."""
    layout = OutputLayout(output)
    if keep_name:
        name = source_version_dir.name
        target = layout.version_dir(name)
        shutil.copytree(source_version_dir, target)
    else:
        name, target = layout.new_version()
        shutil.copytree(source_version_dir, target, dirs_exist_ok=True)
    layout.publish(name)
    return name
