"""A fixed pool of threads for database work (the matcher's fills run on one)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from queue import SimpleQueue

from django.db import close_old_connections, connections


class WorkerPool:
    """A fixed set of threads running submitted calls. Each thread keeps its own DB connection
    across calls (Django connections are per thread) and closes it when the pool stops."""

    def __init__(self, size: int, name: str = "worker") -> None:
        self._tasks: SimpleQueue[tuple[Callable[[], object], Future[None]] | None] = SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True)
            for n in range(size)
        ]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        try:
            while True:
                task = self._tasks.get()
                if task is None:
                    return
                fn, future = task
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    fn()
                except BaseException as exc:
                    close_old_connections()  # drop a connection the error left unusable
                    future.set_exception(exc)
                else:
                    future.set_result(None)
        finally:
            connections.close_all()

    def submit(self, fn: Callable[[], object]) -> Future[None]:
        future: Future[None] = Future()
        self._tasks.put((fn, future))
        return future

    def stop(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)
        for t in self._threads:
            t.join(timeout=30)
