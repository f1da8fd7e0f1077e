"""Fault injection for crash tests: `L2V_FAULT=<point>` raises at that point, `<point>:kill`
kills the process with SIGKILL (no cleanup at all, like a lost node or an OOM kill).

Points in the driver, in order: after_scan, after_vectors, after_index, before_publish.

`embed_actor` fires inside an embed actor on its ACTOR_FAULT_BATCH-th batch, once per run: the
driver hands the setting to the actors (`for_actor`), because a driver's environment variables
do not reach Ray workers, and a marker file in the run's stats folder keeps the actor that Ray
restarts from dying again (`once`). `embed_actor:slow` instead makes every batch take
SLOW_BATCH_S longer (`delay`): tests that need a backlog of blocks, which a tiny model on a fast
machine never builds up.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV = "L2V_FAULT"
EMBED_ACTOR = "embed_actor"
ACTOR_FAULT_BATCH = 2  # the second batch: the actor has already produced output when it dies
INDEX_SHARD = "index_shard"
SLOW_BATCH_S = 0.5


class InjectedFault(RuntimeError):
    pass


def point(name: str) -> None:
    """Fire if L2V_FAULT names this point."""
    _fire_if(os.environ.get(ENV, ""), name)


def for_actor() -> str | None:
    """The L2V_FAULT setting to hand to the embed actors, if it targets them."""
    wanted = os.environ.get(ENV, "")
    return wanted if wanted.partition(":")[0] == EMBED_ACTOR else None


def for_worker(name: str) -> str | None:
    """The L2V_FAULT setting to hand to Ray tasks, if it targets point `name`."""
    wanted = os.environ.get(ENV, "")
    return wanted if wanted.partition(":")[0] == name else None


def once(wanted: str | None, name: str, marker_dir: str | os.PathLike) -> None:
    """Fire `wanted` at point `name` only the first time in this run (across processes): the
    marker file is created before firing, so a restarted process finds it and carries on."""
    if not wanted or wanted.partition(":")[0] != name:
        return
    Path(marker_dir).mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(fired_marker(marker_dir, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return
    _fire_if(wanted, name)


def delay(wanted: str | None, name: str) -> None:
    """Sleep SLOW_BATCH_S if `wanted` is `<name>:slow`."""
    if wanted == f"{name}:slow":
        time.sleep(SLOW_BATCH_S)


def fired_marker(marker_dir: str | os.PathLike, name: str) -> Path:
    return Path(marker_dir) / f"fault-{name}.fired"


def _fire_if(wanted: str, name: str) -> None:
    target, _, action = wanted.partition(":")
    if target != name:
        return
    if action == "slow":
        return  # not a failure: see delay()
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"fault injected at {name} ({ENV}={wanted})")
