"""benchmarks/gpu_check.py --cpu-smoke: the GPU check's own code, on tiny models on the CPU, so that
the script cannot rot while no GPU is around."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_cpu_smoke_runs_every_check_and_writes_the_report(tmp_path):
    gpu_check = _gpu_check()
    # a generous budget: on a busy 2-core box the wall clock runs far slower than the CPU time
    assert gpu_check.main(["--out", str(tmp_path), "--cpu-smoke", "--budget-s", "3600"]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (tmp_path / "gpu_check.log").stat().st_size > 0
    checks = report["checks"]
    assert list(checks) == ["environment", "probe", "encoder_parity", "throughput", "train_steps", "pytest_gpu"]
    assert all(c["status"] == "passed" for c in checks.values()), {k: c["status"] for k, c in checks.items()}
    assert report["passed"] and report["profile"] == "cpu-smoke"
    assert set(checks["probe"]["results"]) >= {"llama/sdpa", "mistral/sdpa", "qwen2/sdpa"}
    assert checks["encoder_parity"]["worst"][1] >= 0.999
    variants = checks["throughput"]["variants"]
    assert variants["packed_sdpa"]["padding_share"] < variants["padded"]["padding_share"]
    for stage in ("mntp", "simcse", "supervised"):
        assert checks["train_steps"][stage]["finite_loss"] and checks["train_steps"][stage]["tokens_per_s"] > 0


def test_a_failing_check_does_not_stop_the_others(tmp_path, monkeypatch):
    gpu_check = _gpu_check()

    def broken(*args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(gpu_check, "check_probe", broken)
    monkeypatch.setattr(gpu_check, "check_encoder_parity", lambda *a: {"passed": True, "worst": ["x", 1.0]})
    monkeypatch.setattr(gpu_check, "check_throughput", broken)
    monkeypatch.setattr(gpu_check, "check_train_steps", lambda *a: {"passed": False, "why": "injected"})
    monkeypatch.setattr(gpu_check, "check_pytest_gpu", lambda *a: {"passed": True})
    assert gpu_check.main(["--out", str(tmp_path), "--cpu-smoke", "--budget-s", "3600"]) == 1
    checks = json.loads((tmp_path / "gpu_check.json").read_text())["checks"]
    assert checks["probe"]["status"] == "error" and "injected" in checks["probe"]["error"]
    assert checks["encoder_parity"]["status"] == "passed"
    assert checks["train_steps"]["status"] == "failed"
    assert checks["pytest_gpu"]["status"] == "passed"


def test_the_budget_skips_what_no_longer_fits(tmp_path):
    gpu_check = _gpu_check()
    assert gpu_check.main(["--out", str(tmp_path), "--cpu-smoke", "--budget-s", "6"]) == 1
    checks = json.loads((tmp_path / "gpu_check.json").read_text())["checks"]
    assert checks["environment"]["status"] == "passed"
    assert checks["pytest_gpu"]["status"] == "skipped" and "budget" in checks["pytest_gpu"]["why"]


def test_the_check_imports_no_ray_faiss_or_pipelines():
    """The GPU machine has neither Ray nor FAISS: the script and what it imports must not need them."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('gpu_check', {str(REPO / 'benchmarks' / 'gpu_check.py')!r})\n"
        "module = importlib.util.module_from_spec(spec); sys.modules['gpu_check'] = module\n"
        "spec.loader.exec_module(module)\n"
        "import l2v_core.contrastive, l2v_core.lora, l2v_core.mntp, l2v_core.packing, l2v_core.testing, peft\n"
        "print(sorted(m for m in ('ray', 'faiss', 'pipelines') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
