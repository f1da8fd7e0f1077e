"""What the chain hands a stage loop: one typed, frozen record instead of a loose dict.

Ray Train passes `train_loop_config` to every worker as a dict, so the chain sends
`LoopConfig(...).to_dict()` and each loop starts with `LoopConfig.from_dict(config)`: a misspelt
or unknown key is an error naming the known ones, not a silently ignored setting.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .trackers import TrackerSpec


@dataclass(frozen=True)
class LoopConfig:
    stage: dict  # the stage's settings (model_dump of MNTPSettings / SimCSESettings / SupervisedSettings)
    model_path: str  # "default", a hub id or a folder every worker can load
    merge: tuple = ()  # earlier stages' checkpoints (ray.train.Checkpoint or folders), merged in order
    log_path: str | None = None  # a live JSONL copy of the step log on rank 0's machine
    strategy: str = "ddp"  # ddp | fsdp
    cpu_threads: int | None = None  # torch intra-op threads per worker on CPUs
    tracker: TrackerSpec | None = None  # where rank 0 sends the step log's curves (TensorBoard, MLflow), or None
    fault: str | None = None  # crash tests: "<stage>_step_<n>[:kill]" (pipelines/faults.py's syntax)
    fault_dir: str | None = None  # where a fired fault leaves its marker (it fires once per run)
    eval_pairs: tuple = ()  # in-training evaluation: (first sentences, second sentences, gold scores), or ()

    def __post_init__(self):
        if self.fault and not self.fault_dir:
            raise ValueError("a loop config with a fault needs fault_dir (where the fired fault leaves its marker)")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # shallow: checkpoints stay objects

    @classmethod
    def from_dict(cls, config: dict) -> LoopConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown loop config keys {unknown}; known keys: {sorted(known)}")
        values = dict(config)
        values["merge"] = tuple(values.get("merge") or ())
        values["eval_pairs"] = tuple(values.get("eval_pairs") or ())
        return cls(**values)
