"""benchmarks/bench_quality.py: the distribution over seeds, and its --quick path end to end on the
tiny model (one MNTP run through Ray Train, export, STS scoring)."""

import importlib.util
import json
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


def _report(seed: int, stsb: float, **changes) -> str:
    report = {"bench": "quality", "config": "jobs/configs/cpu_quality.yaml", "stages": ["mntp", "simcse"],
              "steps": {"mntp": 200, "simcse": 300}, "autocast_bf16": {"mntp": True, "simcse": True},
              "split": "test", "limit": None, "machine": {"cpu": "AMD EPYC", "amx": False}, "seeds": [seed],
              "runs": [{"seed": seed, "stsb_test": stsb}], **changes}
    return json.dumps({"seed_done": report["runs"][0]}) + "\n" + json.dumps(report) + "\n"


def test_seeds_run_apart_merge_into_one_distribution(tmp_path, capsys):
    files = []
    for seed, stsb in ((1, 30.0), (2, 36.0), (3, 33.0)):
        files.append(tmp_path / f"s{seed}.json")
        files[-1].write_text(_report(seed, stsb))
    merged = _bench().main(["--merge", *map(str, files)])
    assert merged["seeds"] == [1, 2, 3] and len(merged["runs"]) == 3
    assert merged["distribution"]["stsb_test"] == {"mean": 33.0, "min": 30.0, "max": 36.0, "spread": 6.0, "n": 3}
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == merged


@pytest.mark.parametrize("bad, message", [
    ({"steps": {"mntp": 50, "simcse": 300}}, "differs from"),  # another recipe
    ({"machine": {"cpu": "Intel", "amx": True}}, "machine"),  # another kind of machine
    ({}, "appears twice"),  # the same seed twice
])
def test_merge_refuses_reports_of_different_recipes_or_repeated_seeds(tmp_path, bad, message):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(_report(1, 30.0))
    second.write_text(_report(1 if not bad else 2, 31.0, **bad))
    with pytest.raises(SystemExit, match=message):
        _bench().main(["--merge", str(first), str(second)])


def test_merge_names_a_file_that_is_not_a_report(tmp_path):
    junk = tmp_path / "junk.json"
    junk.write_text("Traceback (most recent call last):\n")
    with pytest.raises(SystemExit, match="junk.json does not end with a bench_quality report"):
        _bench().main(["--merge", str(junk)])
