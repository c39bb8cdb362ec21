"""core.supervisor: a child that dies is restarted, one that keeps dying stops the demo with
its log's last lines, and stopping leaves no process of any child's group behind."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from core.supervisor import Supervisor, group_alive

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
# A leader with a worker of its own in its process group (as gunicorn and Celery have).
FAMILY = [
    sys.executable,
    "-c",
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
    "print('family up', flush=True); time.sleep(600)",
]
CRASHER = [sys.executable, "-c", "import sys; print('boom: no config', flush=True); sys.exit(3)"]


def supervise(tmp_path: Path, children, **kwargs) -> tuple[Supervisor, list[str]]:
    reports: list[str] = []
    supervisor = Supervisor(
        children,
        log_dir=tmp_path / "log",
        env=dict(os.environ),
        cwd=tmp_path,
        report=reports.append,
        **kwargs,
    )
    return supervisor, reports


def poll_until(supervisor: Supervisor, done, timeout: float = 20.0) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        failure = supervisor.poll()
        if failure is not None or done():
            return failure
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_a_child_that_dies_is_restarted_and_reported(tmp_path):
    supervisor, reports = supervise(tmp_path, [("sleeper", SLEEPER)])
    supervisor.start()
    try:
        [child] = supervisor.children
        first = child.pid
        os.kill(first, signal.SIGKILL)
        failure = poll_until(supervisor, lambda: child.pid != first and child.proc.poll() is None)
        assert failure is None
        assert reports == [
            f"sleeper exited with code -9; restarting it in 1 s (see {tmp_path}/log/sleeper.log)"
        ]
        assert (tmp_path / "log" / "sleeper.log").read_text().count("starting sleeper") == 2
    finally:
        supervisor.stop()
    assert not group_alive(child.pid)


def test_a_crash_loop_gives_up_with_the_log_tail(tmp_path):
    supervisor, reports = supervise(tmp_path, [("crasher", CRASHER)], max_restarts=2)
    supervisor.start()
    try:
        failure = poll_until(supervisor, lambda: False)
    finally:
        supervisor.stop()
    assert failure is not None
    assert failure.startswith("crasher exited 2 times within 60 s (last exit code 3)")
    assert "boom: no config" in failure
    assert len(reports) == 1  # one restart, then it gave up


def test_stop_ends_every_process_of_every_child_group(tmp_path):
    supervisor, _ = supervise(tmp_path, [("family", FAMILY), ("sleeper", SLEEPER)])
    supervisor.start()
    log = tmp_path / "log" / "family.log"
    deadline = time.monotonic() + 20
    while "family up" not in log.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pids = [c.pid for c in supervisor.children]

    supervisor.stop()

    assert all(c.proc.poll() is not None for c in supervisor.children)
    assert not [pid for pid in pids if group_alive(pid)]
