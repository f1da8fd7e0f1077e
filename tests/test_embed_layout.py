"""Output layout: versions, atomic publish, pruning, path checks and the run lock."""

import json
import os
import subprocess
import sys
import time

import pytest

from pipelines.embed import layout as layout_module
from pipelines.embed.layout import LockedError, OutputLayout, inside


def _complete(layout):
    name, path = layout.new_version()
    (path / "manifest.json").write_text(json.dumps({"version": name}))
    return name


def test_publish_switches_current_and_refuses_incomplete(tmp_path):
    layout = OutputLayout(tmp_path)
    assert layout.current() is None
    first = _complete(layout)
    layout.publish(first)
    assert (tmp_path / "CURRENT").read_text().strip() == first and layout.current() == first
    half, _ = layout.new_version()
    with pytest.raises(RuntimeError, match="incomplete"):
        layout.publish(half)
    assert layout.current() == first
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_prune_keeps_newest_and_current_and_drops_leftovers(tmp_path):
    layout = OutputLayout(tmp_path)
    names = [_complete(layout) for _ in range(4)]
    layout.publish(names[0])  # an old version stays published
    leftover, _ = layout.new_version()  # a crashed run's folder
    writing, _ = layout.new_version()
    removed = layout.prune(2, writing=writing)
    assert sorted(removed) == sorted([names[1], leftover])
    assert layout.versions() == sorted([names[0], names[2], names[3], writing])


def test_paths_never_escape_the_output_root(tmp_path):
    layout = OutputLayout(tmp_path)
    for bad in ("../x", "20260101T000000000000Z-abcdef/../../x", "/etc"):
        with pytest.raises(ValueError):
            layout.version_dir(bad)
    with pytest.raises(ValueError, match="escapes"):
        inside(tmp_path, "..", "elsewhere")
    with pytest.raises(ValueError, match="escapes"):
        inside(tmp_path, "/etc/passwd")
    (tmp_path / "CURRENT").write_text("../../etc\n")
    with pytest.raises(ValueError, match="not a version name"):
        layout.current()


def test_lock_refuses_a_live_holder_and_recovers_a_stale_one(tmp_path):
    layout = OutputLayout(tmp_path)
    with layout.lock():
        with pytest.raises(LockedError, match="being written by pid"):
            with layout.lock():
                pass
    assert not (tmp_path / ".lock").exists()
    # a lock left by a process that died
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (tmp_path / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "started": 0}))
    with layout.lock():
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()


def test_a_lock_from_another_host_is_stale_only_once_its_heartbeat_stops(tmp_path):
    layout = OutputLayout(tmp_path)
    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"pid": 1, "host": "another-head-pod", "started": 0}))
    with pytest.raises(LockedError, match="another-head-pod"):  # touched just now: alive
        with layout.lock():
            pass
    silent_for = layout_module.STALE_AFTER_S + 60
    os.utime(lock, (time.time() - silent_for, time.time() - silent_for))
    with layout.lock():  # its heartbeat stopped long ago: taken over
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_the_holder_keeps_its_lock_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(layout_module, "HEARTBEAT_S", 0.05)
    layout = OutputLayout(tmp_path)
    lock = tmp_path / ".lock"
    with layout.lock():
        os.utime(lock, (0, 0))
        time.sleep(0.5)
        assert time.time() - lock.stat().st_mtime < 5


def test_a_same_host_lock_with_a_reused_pid_goes_stale_by_its_heartbeat(tmp_path):
    import socket

    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": 0}))  # a live pid
    with pytest.raises(LockedError):
        with OutputLayout(tmp_path).lock():
            pass
    silent_for = layout_module.STALE_AFTER_S + 60
    os.utime(lock, (time.time() - silent_for, time.time() - silent_for))
    with OutputLayout(tmp_path).lock():
        assert json.loads(lock.read_text())["started"] > 0


def test_taking_over_a_stale_lock_never_removes_a_fresh_one(tmp_path):
    path = tmp_path / ".lock"
    stale = {"pid": 1, "host": "gone", "started": 0}
    fresh = {"pid": 2, "host": "faster-run", "started": 1, "token": "t"}
    path.write_text(json.dumps(fresh))  # written by a run that took over between our read and our removal
    with pytest.raises(LockedError, match="just taken over by another run"):
        layout_module._remove_stale(path, stale)
    assert json.loads(path.read_text()) == fresh and list(tmp_path.iterdir()) == [path]
    path.write_text(json.dumps(stale))
    layout_module._remove_stale(path, stale)
    assert not path.exists() and list(tmp_path.iterdir()) == []
