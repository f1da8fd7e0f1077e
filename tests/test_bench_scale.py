"""benchmarks/bench_scale.py --quick: the growth-curve script runs end to end (2,000 rows, 4 files)
on this session's Ray, so that it cannot rot. Figures live in the benchmark's output, not here."""

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_scale_quick_plans_full_and_incremental(ray_session, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("RAY_ADDRESS", ray_session.get_runtime_context().gcs_address)  # join this session's Ray
    spec = importlib.util.spec_from_file_location("bench_scale", REPO / "benchmarks" / "bench_scale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--workdir", str(tmp_path)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    full, incremental = line["full"], line["incremental"]
    assert line["rows"] == full["rows_read"] == 2000 and full["driver_peak_rss_mb"] > 0
    assert full["rows_reused"] == 0 and set(full["quarantine_by_reason"]) == {"duplicate_id", "empty_text",
                                                                               "null_text"}
    # 1% changed (20 rows, a few of them duplicates or bad), 0.5% deleted (10 rows)
    assert 0 < incremental["rows_to_embed"] <= 20 and 0 < incremental["rows_deleted"] <= 10
    assert incremental["rows_reused"] + incremental["rows_to_embed"] + sum(
        incremental["quarantine_by_reason"].values()) == incremental["rows_read"] == 1990
