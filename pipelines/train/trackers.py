"""Training trackers: where rank 0's step log sends its numeric fields besides the console and
the JSONL log (`--tracker tensorboard|mlflow`).

The driver decides where a stage's curves go (a `TrackerSpec` in the loop config); rank 0's
`StepLog` opens it with `open_tracker` and calls `write(step, values)` after every logged step
and `close()` when the stage finishes. One class per tool, so the step log never asks which.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass, field
from typing import Literal, Protocol


@dataclass(frozen=True)
class TrackerSpec:
    """Where one stage's curves go.

    tensorboard: `location` is the stage's event folder; tags are "<stage>/<field>".
    mlflow: `location` is the tracking URI; one MLflow run per stage (run name `stage`) in the
    experiment `experiment`, with `params` (flat strings) logged once; metric keys are the fields.
    """

    kind: Literal["tensorboard", "mlflow"]
    location: str
    stage: str
    experiment: str = ""
    params: dict[str, str] = field(default_factory=dict)


# The package each tracker imports, and how to install it: the job checks before Ray starts, the
# trackers again where they import it.
PACKAGES = {
    "tensorboard": ("tensorboard", "the tensorboard package: pip install 'l2v-ray[jobs]' (or pip install tensorboard)"),
    "mlflow": ("mlflow", "the mlflow-skinny package: pip install 'l2v-ray[jobs]' "
                         "(or pip install 'mlflow-skinny>=3.17,<4')"),
}


def missing_package(kind: str) -> str | None:
    """None when tracker `kind` can run here, else the message that says how to install it."""
    module, install = PACKAGES[kind]
    if importlib.util.find_spec(module) is None:
        return f"--tracker {kind} needs {install}"
    return None


class Tracker(Protocol):
    def write(self, step: int, values: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def open_tracker(spec: TrackerSpec) -> Tracker:
    if spec.kind == "tensorboard":
        return TensorBoardTracker(spec.location, spec.stage)
    if spec.kind == "mlflow":
        return MlflowTracker(spec.location, spec.experiment, spec.stage, spec.params)
    raise ValueError(f"unknown tracker {spec.kind!r}; known: tensorboard, mlflow")


class TensorBoardTracker:
    """Event files in `folder` (`tensorboard --logdir` reads them)."""

    def __init__(self, folder: str, stage: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise RuntimeError(missing_package("tensorboard") or str(err)) from err
        self.stage = stage
        self._writer = SummaryWriter(log_dir=folder)

    def write(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self._writer.add_scalar(f"{self.stage}/{key}", value, step)
        self._writer.flush()  # curves visible while the stage runs

    def close(self) -> None:
        self._writer.close()


class MlflowTracker:
    """One MLflow run: metrics with `step` as their MLflow step, the stage's settings as params.

    A stage that resumes (a restarted worker group, or a re-run with the same --name) continues
    the latest run of that name in the experiment instead of starting a second one; steps
    repeated after a resume then appear twice in a metric's history, as in TensorBoard.
    """

    def __init__(self, uri: str, experiment: str, run_name: str, params: dict[str, str]):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as err:
            raise RuntimeError(missing_package("mlflow") or str(err)) from err
        if uri.startswith("file:"):
            # MLflow 3 refuses a file store unless this opt-out is set (its replacement, a SQLite
            # store, needs SQLAlchemy, which mlflow-skinny does not bring); a user's explicit
            # MLFLOW_ALLOW_FILE_STORE=false still wins.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        earlier = self.client.search_runs([experiment_id], filter_string=f"attributes.run_name = '{run_name}'",
                                          order_by=["attributes.start_time DESC"], max_results=1)
        if earlier:
            self.run_id = earlier[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            logged = earlier[0].data.params
            params = {k: v for k, v in params.items() if k not in logged}  # MLflow params never change
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        self._log_params(params)

    def write(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED")

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per call
            self.client.log_batch(self.run_id, params=items[start:start + 100])


def flat_params(settings: dict, prefix: str = "") -> dict[str, str]:
    """A nested settings dict as MLflow params: dotted keys ("lora.r"), string values."""
    flat = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_params(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat
