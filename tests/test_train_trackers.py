"""--tracker mlflow: the step log's numeric fields reach an MLflow store that MLflow's own client
reads back (in-process, no Ray Train run), one run per stage with the stage's settings as params."""

import sys
from pathlib import Path

import pytest

from pipelines.train.trackers import TrackerSpec, flat_params

mlflow = pytest.importorskip("mlflow", reason="--tracker mlflow needs mlflow-skinny (pip install 'l2v-ray[jobs]')")


@pytest.fixture
def no_file_store_opt_out(monkeypatch):
    """MLFLOW_ALLOW_FILE_STORE unset for the test (the tracker must set it for its file store)
    and restored afterwards: setenv records the original, delenv then removes it."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "placeholder")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")


def _runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([found.experiment_id]) if found else [])


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_step_log_writes_metrics_and_params_that_mlflow_reads_back(tmp_path, no_file_store_opt_out):
    from pipelines.train.loop_tools import StepLog

    uri = (tmp_path / "mlruns").as_uri()
    params = flat_params({"steps": 3, "lr": 0.001, "lora": {"r": 4, "target_modules": None}})
    spec = TrackerSpec("mlflow", uri, "mntp", experiment="run-a", params=params)
    log = StepLog("mntp", 0, total=3, tracker=spec)
    log.step(step=1, loss=2.5, lr=0.001, grad_norm=0.75, step_time_s=0.5, tokens_per_s_per_worker=100.0, epoch=0)
    log.step(step=2, loss=1.25, lr=0.0005, grad_norm=0.5, step_time_s=0.5, tokens_per_s_per_worker=120.0, epoch=0)
    log.step(step=2, stsb_dev=41.5)
    StepLog("mntp", 1, total=3, tracker=TrackerSpec("mlflow", uri, "mntp", experiment="rank-1")).step(step=1, loss=9.0)
    log.close()

    client, runs = _runs(uri, "run-a")
    assert [(r.info.run_name, r.info.status) for r in runs] == [("mntp", "FINISHED")]
    run = runs[0]
    assert _history(client, run.info.run_id, "loss") == [(1, 2.5), (2, 1.25)]
    assert _history(client, run.info.run_id, "lr") == [(1, 0.001), (2, 0.0005)]
    assert _history(client, run.info.run_id, "stsb_dev") == [(2, 41.5)]
    assert {"loss", "lr", "grad_norm", "step_time_s", "tokens_per_s_per_worker", "stsb_dev"} == set(run.data.metrics)
    assert run.data.params == {"steps": "3", "lr": "0.001", "lora.r": "4", "lora.target_modules": "None"}
    assert _runs(uri, "rank-1")[1] == []  # only rank 0 tracks

    # A resumed stage (restarted workers, or a re-run with the same --name) continues its run.
    resumed = StepLog("mntp", 0, total=3, tracker=spec)
    resumed.step(step=3, loss=1.0, epoch=1)
    resumed.close()
    client, runs = _runs(uri, "run-a")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert _history(client, runs[0].info.run_id, "loss") == [(1, 2.5), (2, 1.25), (3, 1.0)]


def test_the_chain_logs_to_output_mlruns_or_to_mlflow_tracking_uri(tmp_path, monkeypatch):
    from pipelines.train.chain import tracker_spec
    from pipelines.train.config import AdaptConfig

    cfg = AdaptConfig.model_validate({"profile": "tiny", "tracker": "mlflow", "mntp": {"steps": 7}})
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = tracker_spec(cfg, tmp_path, "my-run", "mntp", "default")
    assert (spec.kind, spec.location, spec.stage, spec.experiment) == (
        "mlflow", f"file://{tmp_path}/mlruns", "mntp", "my-run")
    assert spec.params["steps"] == "7" and spec.params["lora.r"] == "16" and spec.params["profile"] == "tiny"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracker_spec(cfg, tmp_path, "my-run", "mntp", "default").location == "http://mlflow.example:5000"
    assert tracker_spec(cfg.model_copy(update={"tracker": "none"}), tmp_path, "my-run", "mntp", "default") is None


def test_config_takes_mlflow_and_rejects_a_typo():
    from pipelines.train.config import AdaptConfig

    assert AdaptConfig.model_validate({"profile": "p", "tracker": "mlflow"}).tracker == "mlflow"
    with pytest.raises(ValueError, match=r"(?s)tracker.*'none', 'tensorboard' or 'mlflow'"):
        AdaptConfig.model_validate({"profile": "p", "tracker": "mlfow"})


def test_a_missing_mlflow_says_what_to_install(monkeypatch, tmp_path):
    from pipelines.train.trackers import open_tracker

    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow... now raises ImportError
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(RuntimeError, match=r"pip install 'l2v-ray\[jobs\]'"):
        open_tracker(TrackerSpec("mlflow", Path(tmp_path).as_uri(), "mntp", experiment="e"))


def test_tensorboard_tracker_writes_stage_tags_and_closes(tmp_path):
    """The same step log through the TensorBoard writer: tags "<stage>/<field>", read back by
    tensorboard's own reader; step, epoch and elapsed time stay axes, not curves."""
    pytest.importorskip("tensorboard", reason="--tracker tensorboard needs tensorboard (pip install 'l2v-ray[jobs]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pipelines.train.loop_tools import StepLog

    log = StepLog("simcse", 0, total=2, tracker=TrackerSpec("tensorboard", str(tmp_path / "tb"), "simcse"))
    log.step(step=1, loss=0.5, lr=0.01, epoch=0)
    log.step(step=2, loss=0.25, lr=0.005, epoch=0)
    log.close()
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert set(events.Tags()["scalars"]) == {"simcse/loss", "simcse/lr"}
    assert [(e.step, e.value) for e in events.Scalars("simcse/loss")] == [(1, 0.5), (2, 0.25)]
