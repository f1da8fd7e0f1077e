"""A stage on a 2-node local cluster (ray.cluster_utils.Cluster): SPREAD placement puts a worker
on each node, checkpoints go to a shared storage folder. Runs in a subprocess so the session's
own local Ray (ray_session) is left alone."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[2])
    from pathlib import Path
    import ray
    from ray.cluster_utils import Cluster
    from pipelines.train.config import ClusterSettings
    from pipelines.train.data import mntp_blocks
    from pipelines.train.mntp_loop import mntp_loop
    from pipelines.train.trainer import check_storage, run_stage
    from train_helpers import fast_stage, save_tiny_causal_lm, write_corpus

    root = Path(sys.argv[1])
    model, corpus = save_tiny_causal_lm(root / "model"), write_corpus(root / "data")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    out = {"nodes_alive": sum(n["Alive"] for n in ray.nodes())}
    try:
        check_storage(str(root / "implicit"), explicit=False)
    except ValueError as err:
        out["implicit_storage_error"] = str(err)
    storage = check_storage(str(root / "shared_storage"), explicit=True)
    result = run_stage(mntp_loop, {"stage": fast_stage(steps=2, block_size=32), "model_path": model},
                       ClusterSettings(num_workers=2, cpus_per_worker=1, placement_strategy="SPREAD"),
                       name="two-nodes", storage_path=storage,
                       datasets={"train": mntp_blocks(corpus, model_path=model, block_size=32)})
    out.update(result.metrics)
    out["checkpoint"] = result.checkpoint.path
    ray.shutdown()
    cluster.shutdown()
    print("RESULT " + json.dumps(out))
""")


def test_stage_on_two_nodes_with_shared_storage(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", "RAY_AUTH_MODE": "disabled",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    script = tmp_path / "two_nodes.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), str(REPO / "tests")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=400)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["nodes_alive"] == 2
    assert out["nodes"] == 2  # one worker on each node
    assert "shared location" in out["implicit_storage_error"]
    assert out["step"] == 2 and Path(out["checkpoint"]).is_relative_to(tmp_path / "shared_storage")
    assert (Path(out["checkpoint"]) / "adapter" / "adapter_config.json").is_file()
