"""A small process supervisor: named child processes, their output in log files, a child that
dies restarted, and an orderly stop (docs/operations.md, "The demo").

Each child runs in a session of its own, so the terminal's Ctrl-C reaches only the supervisor,
which then stops the children in reverse start order: SIGTERM to the child's whole process
group (a Celery worker's or gunicorn's own workers included), SIGKILL to what is still there
after the grace period. A child that exits is restarted after a short, growing pause; one that
exits `max_restarts` times within `window_seconds` is crash-looping, and the supervisor gives
up: `poll()` returns why, and the caller stops everything.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    proc: subprocess.Popen[bytes] | None = None
    exits: deque[float] = field(default_factory=deque)  # monotonic times of unexpected exits
    restart_at: float | None = None  # when a dead child is due to be started again

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid


class Supervisor:
    def __init__(
        self,
        children: Sequence[tuple[str, Sequence[str]]],
        *,
        log_dir: Path,
        env: Mapping[str, str],
        cwd: Path,
        report: Callable[[str], None],
        max_restarts: int = 5,
        window_seconds: float = 60.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.children = [Child(name, list(argv)) for name, argv in children]
        self.log_dir = log_dir
        self.env = dict(env)
        self.cwd = cwd
        self.report = report
        self.max_restarts = max_restarts
        self.window_seconds = window_seconds
        self.stop_timeout = stop_timeout
        self._logs: dict[str, IO[bytes]] = {}

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for child in self.children:
            self._spawn(child)

    def _spawn(self, child: Child) -> None:
        log = self._logs.get(child.name)
        if log is None:
            log = self._logs[child.name] = open(self.log_path(child.name), "ab")  # noqa: SIM115
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"\n--- {stamp} starting {child.name}: {' '.join(child.argv)}\n".encode())
        log.flush()
        child.proc = subprocess.Popen(  # noqa: S603 - our own commands, fixed arguments
            child.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        child.restart_at = None

    def poll(self) -> str | None:
        """Restart children that exited (when their pause is over); the reason to give up when
        one is crash-looping, else None. Call it every fraction of a second."""
        now = time.monotonic()
        for child in self.children:
            if child.proc is None:
                continue
            code = child.proc.poll()
            if code is None:
                continue
            if child.restart_at is None:
                _signal_group(child, signal.SIGKILL)  # what it leaves behind (pool workers)
                child.exits.append(now)
                while child.exits and child.exits[0] < now - self.window_seconds:
                    child.exits.popleft()
                where = self.log_path(child.name)
                if len(child.exits) >= self.max_restarts:
                    return (
                        f"{child.name} exited {len(child.exits)} times within "
                        f"{self.window_seconds:.0f} s (last exit code {code}); see {where}:\n"
                        + self.tail(child.name)
                    )
                pause = min(10.0, 2.0 ** (len(child.exits) - 1))
                self.report(
                    f"{child.name} exited with code {code}; restarting it in {pause:.0f} s "
                    f"(see {where})"
                )
                child.restart_at = now + pause
            elif now >= child.restart_at:
                self._spawn(child)
        return None

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM every child's process group (in reverse start order), then SIGKILL what is
        left after `stop_timeout`; waits for all of them."""
        running = [c for c in reversed(self.children) if c.proc is not None]
        for child in running:
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for child in running:
            assert child.proc is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(max(0.0, deadline - time.monotonic()))
        for child in running:
            assert child.proc is not None
            # The leader may be gone while its workers linger: the whole group goes.
            _signal_group(child, signal.SIGKILL)
            if child.proc.poll() is None:
                self.report(f"{child.name} did not stop within {self.stop_timeout:.0f} s: killed")
                child.proc.wait()
        for log in self._logs.values():
            log.close()
        self._logs.clear()


def _signal_group(child: Child, sig: signal.Signals) -> None:
    if child.pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, sig)  # start_new_session: the group id is the child's pid


def group_alive(pid: int) -> bool:
    """Whether any process of the group `pid` leads still exists."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child `manage.py`/`celery`/`gunicorn` of ours: this process's, with
    the database, Redis and secret key it runs on spelled out, so the child uses the same
    servers and databases (the embedded ones included) and its login links and sessions verify
    here; Celery's broker follows REDIS_URL unless CELERY_BROKER_URL names one."""
    from django.conf import settings
    from django.db import DEFAULT_DB_ALIAS, connections

    from core.db import database_url

    env = dict(os.environ)
    if not env.get("CELERY_BROKER_URL"):
        env.pop("CELERY_BROKER_URL", None)
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=database_url(connections[DEFAULT_DB_ALIAS].settings_dict),
        REDIS_URL=str(settings.REDIS_URL),
        SECRET_KEY=str(settings.SECRET_KEY),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env
