"""Fault injection for crash tests: `L2V_FAULT=<point>` raises at that point, `<point>:kill`
kills the process with SIGKILL (no cleanup at all, like a lost node or an OOM kill).

Points in a run, in order: after_scan, after_vectors, after_index, before_publish.
"""

from __future__ import annotations

import os
import signal

ENV = "L2V_FAULT"


class InjectedFault(RuntimeError):
    pass


def point(name: str) -> None:
    wanted = os.environ.get(ENV, "")
    target, _, action = wanted.partition(":")
    if target != name:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"fault injected at {name} ({ENV}={wanted})")
