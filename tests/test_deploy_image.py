"""deploy/: the image the KubeRay manifest names is the one deploy/Dockerfile builds, the install
steps are the Makefile's, and the manifest's late-start guard (RayCronJob has no starting
deadline) really skips a late night and runs an on-time one. No container engine runs here: the
image's install steps are tried in a clean virtualenv by `deploy/check_install.sh` (minutes, not
part of the suite)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"


@pytest.fixture(scope="module")
def cronjob() -> dict:
    return yaml.safe_load((DEPLOY / "kuberay" / "raycronjob.yaml").read_text())


def test_manifest_names_the_images_the_dockerfile_builds(cronjob):
    cluster = cronjob["spec"]["jobTemplate"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    workers = [g["template"]["spec"]["containers"][0]["image"] for g in cluster["workerGroupSpecs"]]
    assert head.endswith("-cpu") and all(w.endswith("-gpu") for w in workers)
    assert not any(i.endswith(":latest") or i.startswith("your-registry") for i in [head, *workers])
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    ray_version = re.search(r"ARG RAY_VERSION=(\S+)", dockerfile).group(1)
    assert cluster["rayVersion"] == ray_version
    assert "rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-gpu" in dockerfile  # CUDA base, not the CPU one
    # the entrypoint runs /app/jobs/..., which the image copies there
    assert "/app/jobs/embed_corpus.py" in cronjob["spec"]["jobTemplate"]["entrypoint"]
    assert "WORKDIR /app" in dockerfile and "COPY --chown=ray:users jobs jobs" in dockerfile


def test_no_dead_autoscaling_settings_and_a_stated_time_zone(cronjob):
    cluster = cronjob["spec"]["jobTemplate"]["rayClusterSpec"]
    for group in cluster["workerGroupSpecs"]:
        if not cluster.get("enableInTreeAutoscaling"):
            # without the autoscaler, a maxReplicas above replicas would promise scaling that never happens
            assert group["minReplicas"] == group["replicas"] == group["maxReplicas"]
    assert cronjob["spec"]["timeZone"] == "Etc/UTC"


def test_image_and_makefile_install_the_same_way():
    makefile = (REPO / "Makefile").read_text()
    assert "bash deploy/install.sh $(PY) -e '.[dev]'" in makefile
    assert "bash deploy/install.sh python -e \"/app[jobs,eval,serve]\"" in (DEPLOY / "Dockerfile").read_text()
    usage = subprocess.run(["bash", str(DEPLOY / "install.sh")], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr


@pytest.mark.parametrize("utc,runs", [("0215", True), ("0400", True), ("0615", True), ("0616", False),
                                      ("1400", False), ("0100", False)])
def test_late_start_guard(cronjob, tmp_path, utc, runs):
    """The entrypoint, run by a real shell with `date` and `python` stubbed: it starts the job only
    between 02:15 and 06:15 UTC."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    clock = f"case \"$*\" in *%H%M*) echo {utc};; *) echo {utc[:2]}:{utc[2:]};; esac"
    (bin_dir / "date").write_text(f"#!/bin/sh\n{clock}\n")
    (bin_dir / "python").write_text("#!/bin/sh\necho \"ran: $*\"\n")
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    out = subprocess.run(["sh", "-c", cronjob["spec"]["jobTemplate"]["entrypoint"]], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert ("ran: /app/jobs/embed_corpus.py --incremental" in out) is runs, out
    assert ("late start" in out) is not runs
