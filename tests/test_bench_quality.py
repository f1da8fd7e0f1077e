"""benchmarks/bench_quality.py: the distribution over seeds, and its --quick path end to end on the
tiny model (one MNTP run through Ray Train, export, STS scoring)."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "benchmarks" / "bench_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_distribution_over_seeds():
    runs = [{"seed": 1, "stsb_test": 50.0, "scifact_test": 40.0, "mntp/stsb_test": 20.0},
            {"seed": 2, "stsb_test": 54.0, "scifact_test": 41.0, "mntp/stsb_test": 28.0},
            {"seed": 3, "stsb_test": 52.5, "scifact_test": 39.5, "mntp/stsb_test": 24.0}]
    dist = _bench().distribution(runs)
    assert dist["stsb_test"] == {"mean": 52.17, "min": 50.0, "max": 54.0, "spread": 4.0, "n": 3}
    assert dist["scifact_test"]["spread"] == 1.5 and dist["mntp/stsb_test"]["mean"] == 24.0
    assert "seed" not in dist


def test_seeded_config_puts_the_seed_in_both_stages():
    bench = _bench()
    args = bench.parse_args(["--seeds", "5", "--mntp-steps", "7", "--autocast-bf16", "false", "--stages", "mntp"])
    cfg = bench.seeded_config(args, 5)
    assert cfg.mntp.seed == cfg.simcse.seed == 5 and cfg.mntp.steps == 7 and cfg.stages == ["mntp"]
    assert cfg.mntp.autocast_bf16 is False and cfg.simcse.autocast_bf16 is False
    assert cfg.cluster.name == "quality-seed-5"  # one Ray Train run per seed, never resumed from another


@pytest.mark.slow
def test_quick_run_prints_the_distribution(ray_session, tmp_path):
    report = _bench().main(["--quick", "--stages", "mntp", "--seeds", "3", "--work", str(tmp_path)])
    assert report["seeds"] == [3] and report["stages"] == ["mntp"] and len(report["runs"]) == 1
    assert -100 <= report["runs"][0]["stsb_test"] <= 100 and report["runs"][0]["mntp_final_loss"] > 0
    assert report["distribution"]["stsb_test"]["n"] == 1
    assert {"cpu", "amx", "avx512_bf16", "torch"} <= report["machine"].keys()
