"""`ray job submit` of jobs/embed_corpus.py against a real `ray start --head` on loopback ports
picked here. Only the Ray this test starts is stopped (its `ray start --block` process group)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from embed_helpers import write_corpus

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _wait_for_dashboard(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"the Ray dashboard at {url} did not answer within {timeout} s")


@pytest.fixture
def ray_head(tmp_path):
    """A local head on free loopback ports; yields (dashboard URL, env for the client)."""
    ray_bin = Path(sys.executable).parent / "ray"
    if not ray_bin.exists():
        pytest.skip("the `ray` CLI is not installed beside this Python (pip install 'ray[default]')")
    gcs, dash, client, agent, agent_grpc, metrics, rt_env, node_mgr, obj_mgr, wmin = _free_ports(10)
    temp_dir = Path(tempfile.mkdtemp(prefix="l2vray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0")
    command = [
        str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={rt_env}", f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
        f"--min-worker-port={wmin}", f"--max-worker-port={wmin + 200}", "--num-cpus=2", f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    log = open(tmp_path / "ray_start.log", "w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        _wait_for_dashboard(url, process)
        yield url, env
    finally:
        # stop only what we started: the `ray start --block` process and its own process group
        # (SIGINT is what `ray start --block` handles: it then stops the daemons it started)
        for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            if process.poll() is not None:
                break
            if sig == signal.SIGINT:
                process.send_signal(sig)
            else:
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_embed_job_runs_through_ray_job_submit(ray_head, tiny_encoder_dir, tmp_path):
    url, env = ray_head
    corpus = write_corpus(tmp_path / "corpus", n=20, files=1)
    output = tmp_path / "out"
    runtime_env = {"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}}
    submit = [
        str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", url, "--working-dir", str(REPO),
        "--runtime-env-json", json.dumps(runtime_env),
        "--submission-id", f"embed-test-{os.getpid()}-{int(time.time())}",
        "--", "python", "jobs/embed_corpus.py", "--input", str(corpus), "--output", str(output),
        "--model", str(tiny_encoder_dir), "--num-actors", "1", "--cpu-threads", "1", "--batch-size", "16", "--json",
    ]
    done = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout.lower(), done.stdout[-3000:]
    summary = json.loads(next(line for line in done.stdout.splitlines()[::-1] if line.startswith("{")))
    assert summary["rows_read"] == summary["rows_embedded"] == 20
    assert (output / "CURRENT").read_text().strip() == summary["version"]
