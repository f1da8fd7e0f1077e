"""The plan on the cluster (issue 10): duplicates spread over files and id partitions are still
resolved by input order, the driver's plan holds counts and paths only, and --plan-only prints
what a run would do without loading the model or publishing anything."""

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from embed_helpers import clean_texts, small_config

from jobs import embed_corpus
from pipelines.embed import OutputLayout, run_embed
from pipelines.embed.batch_udfs import vectors_schema
from pipelines.embed.incremental import ReuseSources
from pipelines.embed.plan import PlanSummary, finish_plan, start_scan
from pipelines.embed.plan_tasks import QUARANTINE, planned_rows_of_file
from pipelines.embed.scan import Columns


def _write(path: Path, ids, texts):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "text": texts}), path)
    return str(path)


def _small_values(value, limit: int):
    """Every leaf of a driver-side object, refusing per-row containers (tables, arrays, long lists)."""
    assert not isinstance(value, (pa.Table, pa.Array, pa.ChunkedArray, np.ndarray)), type(value)
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            _small_values(getattr(value, f.name), limit)
    elif isinstance(value, dict):
        assert len(value) <= limit
        for k, v in value.items():
            _small_values(k, limit)
            _small_values(v, limit)
    elif isinstance(value, (list, tuple)):
        assert len(value) <= limit
        for v in value:
            _small_values(v, limit)


def test_duplicates_over_files_and_partitions_keep_the_first_valid_copy_in_input_order(ray_session, tmp_path):
    # 3 files, 7 partitions: copies of one id come from different files and reach one partition
    n = 60
    a = _write(tmp_path / "in" / "a.parquet", [f"k{i}" for i in range(n)] + ["late", "blank"],
               [f"a{i}" for i in range(n)] + ["a-late", "   "])
    b = _write(tmp_path / "in" / "b.parquet", [f"k{i}" for i in range(0, n, 2)] + ["blank", "late"],
               [f"b{i}" for i in range(0, n, 2)] + ["b-blank", "a-late"])
    c = _write(tmp_path / "in" / "c.parquet", [f"k{i}" for i in range(0, n, 3)] + ["blank"],
               [f"c{i}" for i in range(0, n, 3)] + ["c-blank"])
    files = [a, b, c]
    plan_dir = tmp_path / "plan"
    refs = start_scan(files, Columns("id", "text"), plan_dir, 7)
    plan = finish_plan(refs, files, ReuseSources(reason="test"), vectors_schema(4, True), plan_dir, 7,
                       skip_bad_files=False, previous=None, started=time.perf_counter())
    assert plan.rows_read == (n + 2) + (n // 2 + 2) + (n // 3 + 1)
    assert plan.rows_planned == plan.rows_to_embed == n + 2  # k*, late, blank
    assert plan.quarantine_by_reason == {"empty_text": 1, "duplicate_id": (n // 2 + 1) + (n // 3 + 1)}
    assert plan.rows_read == plan.rows_to_embed + plan.rows_quarantined
    # kept: every k* and "late" from a (first in input order); "blank" from b (a's copy is invalid)
    kept_a = planned_rows_of_file(str(plan_dir), 0).column("id").to_pylist()
    kept_b = planned_rows_of_file(str(plan_dir), 1).column("id").to_pylist()
    assert kept_a == [f"k{i}" for i in range(n)] + ["late"] and kept_b == ["blank"]
    assert planned_rows_of_file(str(plan_dir), 2).num_rows == 0
    dups = pq.read_table(plan_dir / QUARANTINE).filter(pc.equal(pc.field("reason"), "duplicate_id"))
    by_key = {(d["id"], Path(d["source_file"]).name): d["detail"] for d in dups.to_pylist()}
    assert f"kept the copy at {b} row {n // 2}" in by_key[("blank", "c.parquet")]
    assert "different text" in by_key[("blank", "c.parquet")]
    late = by_key[("late", "b.parquet")]
    assert f"kept the copy at {a} row {n}" in late and "same text" in late
    assert f"kept the copy at {a} row 6" in by_key[("k6", "c.parquet")]
    # the driver's plan: counts, paths and decisions only (no per-row data, bounded by files/partitions)
    _small_values(plan, limit=max(len(files), plan.partitions) + 8)
    assert isinstance(plan, PlanSummary) and dataclasses.is_dataclass(plan)
    assert json.loads((plan_dir / "plan.json").read_text())["rows_to_embed"] == n + 2


def test_plan_only_prints_what_a_run_would_do_without_the_model_or_publishing(ray_session, tiny_encoder_dir,
                                                                              tmp_path, capsys):
    texts = {f"doc{i}": t for i, t in enumerate(clean_texts(12))}
    corpus = tmp_path / "c" / "part-0.parquet"
    _write(corpus, list(texts), list(texts.values()))
    output = tmp_path / "out"
    published = run_embed(small_config(corpus.parent, output, tiny_encoder_dir, incremental=True))
    changed = {**texts, "doc3": "a new text about lighthouses", "new": "a new document", "bad": "  "}
    del changed["doc5"]
    _write(corpus, list(changed), list(changed.values()))
    capsys.readouterr()
    # a model path that does not exist: loading it would fail the run
    args = ["--input", str(corpus.parent), "--output", str(output), "--model", str(tmp_path / "no-such-model"),
            "--incremental", "--plan-only", "--json"]
    assert embed_corpus.main(args) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["plan_only"] is True
    assert (summary["rows_to_embed"], summary["rows_reused"], summary["rows_deleted"]) == (2, 10, 1)
    assert summary["quarantine_by_reason"] == {"empty_text": 1} and summary["rows_read"] == 13
    assert "plan only (nothing embedded, nothing published)" in out
    layout = OutputLayout(output)
    assert layout.current() == published.version  # never published
    [plan_version] = [v for v in layout.versions() if v != published.version]
    assert not layout.is_complete(plan_version)
    plan_dir = Path(summary["plan_dir"])
    assert plan_dir.parent == layout.version_dir(plan_version) and (plan_dir / "plan.json").is_file()
    # the next real run does what the plan said and prunes the plan-only folder
    result = run_embed(small_config(corpus.parent, output, tiny_encoder_dir, incremental=True))
    c = result.counts
    assert (c["rows_embedded"], c["rows_reused"], c["rows_deleted"]) == (2, 10, 1)
    assert plan_version not in layout.versions()


def test_a_worker_lost_while_resolving_the_plan_is_retried_with_exact_counts(ray_session, tiny_encoder_dir,
                                                                            tmp_path, monkeypatch):
    texts = clean_texts(16)
    _write(tmp_path / "c" / "a.parquet", [f"doc{i}" for i in range(10)], texts[:10])
    _write(tmp_path / "c" / "b.parquet", [f"doc{i}" for i in range(6, 16)], texts[6:16])  # doc6-9 twice
    monkeypatch.setenv("L2V_FAULT", "plan_task:kill")  # SIGKILL the task resolving partition 0, once
    result = run_embed(small_config(tmp_path / "c", tmp_path / "out", tiny_encoder_dir))
    assert (result.version_dir / "plan" / "fault-plan_task.fired").exists()  # the worker did die
    c = result.counts
    assert (c["rows_read"], c["rows_embedded"], c["quarantine_by_reason"]) == (20, 16, {"duplicate_id": 4})
    ids = pq.read_table(result.version_dir / "vectors", columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == sorted(f"doc{i}" for i in range(16))  # each once
