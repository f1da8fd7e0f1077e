"""The TorchTrainer factory: one place that turns settings into Ray Train objects.

A stage run is `(storage_path, name)`: running it again with the same pair resumes from its latest
checkpoint (Ray Train V2 restores it and `ray.train.get_checkpoint()` returns it in the loop).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from pathlib import Path

import ray
import ray.data
import ray.train
from ray.train.torch import TorchTrainer

from .config import ClusterSettings

logger = logging.getLogger(__name__)


def alive_nodes() -> int:
    return sum(1 for n in ray.nodes() if n.get("Alive"))


def check_storage(storage_path: str | None, *, explicit: bool) -> str:
    """An absolute local path or a URI. Multi-node runs need storage every node can reach: refuse
    the implicit local default there (an explicit local path is trusted to be NFS)."""
    if storage_path is None:
        raise ValueError("no storage_path: pass --storage-path (a local folder, NFS path or cloud URI)")
    if "://" in storage_path:
        return storage_path
    if not explicit and ray.is_initialized() and alive_nodes() > 1:
        raise ValueError(
            f"this Ray cluster has {alive_nodes()} nodes but storage_path defaulted to the local folder "
            f"{storage_path}, which the other nodes cannot see. Pass --storage-path with a shared location: "
            f"an NFS mount present on every node, or a cloud URI such as s3://bucket/l2v-runs."
        )
    return str(Path(storage_path).expanduser().resolve())


def build_trainer(
    loop: Callable[[dict], None],
    loop_config: dict,
    cluster: ClusterSettings,
    *,
    name: str,
    storage_path: str,
    datasets: dict,
) -> TorchTrainer:
    """A TorchTrainer with scaling, failure and checkpoint settings from `cluster`."""
    resources = {"CPU": cluster.cpus_per_worker}
    if cluster.use_gpu:
        resources["GPU"] = 1
    scaling = ray.train.ScalingConfig(
        num_workers=cluster.num_workers,
        use_gpu=cluster.use_gpu,
        resources_per_worker=resources,
        placement_strategy=cluster.placement_strategy,
    )
    run = ray.train.RunConfig(
        name=name,
        storage_path=storage_path,
        failure_config=ray.train.FailureConfig(max_failures=cluster.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cluster.num_to_keep),
    )
    return TorchTrainer(loop, train_loop_config=loop_config, scaling_config=scaling, run_config=run, datasets=datasets,
                        dataset_config=ordered_ingest())


def ordered_ingest() -> ray.train.DataConfig:
    """Ray Data hands blocks on in the order their tasks finish unless told otherwise, and that
    order depends on the machine's load: the same seed would then train on a different row order.
    With preserve_order the blocks reach the split, and each worker, in corpus order, so a seed
    fixes the data order (the split gives blocks out by rows dispatched, a deterministic rule)."""
    # the driver's options, as Ray Train's default
    options = copy.deepcopy(ray.data.DataContext.get_current().execution_options)
    options.preserve_order = True
    return ray.train.DataConfig(execution_options=options)


def run_stage(
    loop: Callable[[dict], None], loop_config: dict, cluster: ClusterSettings, *, name: str, storage_path: str,
    datasets: dict,
) -> ray.train.Result:
    """Fit (or resume) one stage; raises when it fails for good. The result has the last checkpoint."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    trainer = build_trainer(loop, loop_config, cluster, name=name, storage_path=storage_path, datasets=datasets)
    logger.info("stage %s: %d worker(s), storage %s", name, cluster.num_workers, storage_path)
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(
            f"stage {name} finished without a checkpoint under {storage_path}/{name}; with num_workers=0 "
            f"Ray Train keeps no checkpoints: use num_workers >= 1"
        )
    return result
