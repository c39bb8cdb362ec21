"""Fixtures shared by the market-data tests: the recorded Polymarket fixtures and a fake
Polymarket (real HTTP + websocket on loopback) serving them, and a private Redis that fault
tests stop and restart."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from marketdata.fakepoly import FakePolymarket


@pytest.fixture
def fixtures_dir(shared_dir) -> Path:
    """shared/fixtures/polymarket (skips, or fails under REQUIRE_FIXTURES=1, when absent)."""
    return shared_dir / "fixtures" / "polymarket"


@pytest.fixture
def fake(fixtures_dir):
    """A FakePolymarket serving the recorded fixtures, stopped after the test."""
    server = FakePolymarket(fixtures_dir).start_in_thread()
    try:
        yield server
    finally:
        server.stop()


class PrivateRedis:
    """A redis-server of the test's own (a port in 6500-6599, its dump in a temporary
    directory), which fault tests stop and start again: empty, or from its dump."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = _free_port(range(6500, 6600))
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--dbfilename", "dump.rdb", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self, *, save: bool = False) -> None:
        """SHUTDOWN, writing the dump first with save=True; without, the dump is removed so
        the next start is empty."""
        assert self.proc is not None
        if save:
            redis.Redis(port=self.port).save()
        else:
            (self.directory / "dump.rdb").unlink(missing_ok=True)
        self.proc.terminate()  # SIGTERM: redis-server exits without saving (--save "")
        self.proc.wait(10)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


def _free_port(ports: range) -> int:
    for port in random.sample(list(ports), len(ports)):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 6500-6599 for a private Redis")


@pytest.fixture
def private_redis(tmp_path):
    if shutil.which("redis-server") is None:
        reason = "needs the redis-server binary for a private, restartable Redis"
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (REQUIRE_SERVICES=1)")
        pytest.skip(reason)
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            server.proc.kill()
            server.proc.wait(10)
