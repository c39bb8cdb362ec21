"""A private, restartable stack for the fault tests (docs/operations.md "When PostgreSQL or
Redis is down"): a PostgreSQL and a Redis of their own (config.embedded, on Unix sockets
under the test's temp dir, never the machine's shared services), migrated and seeded, the web
app as a real gunicorn process and the matcher as its own process, both pointed at them.

Books come from `FakeFeed`, a stand-in for the feed process: it publishes tops through the
project's RedisBus and beats the shard's heartbeat, and after Redis comes back it
republishes every book, as the feed does on reconnect. It records when each book version was
published, so a test can tell which book a fill used (by its hash)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from config.embedded import PostgresServer, RedisServer

ROOT = Path(__file__).resolve().parents[2]
PROCESS_START_SECONDS = 60.0


def wait_for(check: Callable[[], Any], what: str, timeout: float) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeFeed:
    """Publishes the tops it is given and beats the heartbeat every 0.25 s; tolerates Redis
    being down, and republishes every book once Redis answers again."""

    def __init__(self, redis_url: str) -> None:
        from marketdata.bus import RedisBus

        self.bus = RedisBus.from_url(redis_url, n_shards=1)
        self.books: dict[str, Any] = {}
        self.published: dict[str, float] = {}  # book hash -> when it first reached Redis
        self._version = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._connected = True
        self._thread = threading.Thread(target=self._run, name="fake-feed", daemon=True)
        self._thread.start()

    def set_book(
        self, token_id: str, *, bids: list[tuple[str, str]], asks: list[tuple[str, str]]
    ) -> str:
        """A new version of the token's book (its hash names it); published now if Redis is
        up, else on reconnect. Returns the hash."""
        from marketdata.book import OrderBook
        from marketdata.bus import BookTop

        with self._lock:
            self._version += 1
            book_hash = f"faults-v{self._version}"
            book = OrderBook.from_snapshot(
                {
                    "market": "0xfaults",
                    "asset_id": token_id,
                    "timestamp": str(int(time.time() * 1000)),
                    "hash": book_hash,
                    "bids": [{"price": p, "size": s} for p, s in bids],
                    "asks": [{"price": p, "size": s} for p, s in asks],
                    "tick_size": "0.01",
                }
            )
            self.books[token_id] = BookTop.from_book(book)
        self._publish([token_id])
        return book_hash

    def _publish(self, token_ids: list[str]) -> bool:
        import redis

        from marketdata.bus import now_ms

        with self._lock:
            tops = [self.books[t].with_fresh(True, published_at=now_ms()) for t in token_ids]
            try:
                self.bus.publish(tops)
                self.bus.heartbeat(0)
            except redis.RedisError:
                self._connected = False
                return False
            at = time.monotonic()
            for top in tops:
                self.published.setdefault(top.hash, at)
            return True

    def _run(self) -> None:
        import redis

        while not self._stop.wait(0.25):
            if not self._connected:
                self._connected = self._publish(list(self.books))
                continue
            try:
                self.bus.heartbeat(0)
            except redis.RedisError:
                self._connected = False

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class Stack:
    root: Path
    pg: PostgresServer
    redis: RedisServer
    env: dict[str, str]
    web_url: str = ""
    seed: dict[str, Any] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    feed: FakeFeed | None = None

    def manage(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 (kept open by the child)
        self.procs[name] = subprocess.Popen(
            argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def alive(self) -> None:
        for name, proc in self.procs.items():
            assert proc.poll() is None, (
                f"{name} exited ({proc.returncode}):\n{self.log(name)[-3000:]}"
            )

    def trader(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.web_url,
            headers={"Authorization": f"Bearer {self.seed['trader_key']}"},
            timeout=15.0,
        )

    def partner(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.web_url, headers={"X-API-Key": self.seed["partner_key"]}, timeout=15.0
        )

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.pg.url("polysim"), connect_timeout=5) as conn:
            return conn.execute(query, params).fetchall()

    def matcher_state(self) -> dict[str, Any]:
        path = self.root / "matcher.json"
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return {}

    def audit(self) -> None:
        """The ledger audit (`manage.py ledger audit`: cash, reservations, positions, fill
        sequences) on the stack's database: clean, or the test fails naming each violation."""
        result = self.manage("ledger", "audit")
        assert result.returncode == 0, result.stdout + result.stderr


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("faults")
    pg, rd = PostgresServer(root / "postgres", max_connections=100), RedisServer(root / "redis")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "REDIS_", "TEST_REDIS"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=pg.url("polysim"),
        REDIS_URL=rd.url(0),
        SECRET_KEY="polysim-fault-tests-only-not-for-any-deployment",
        DEBUG="0",
        PRICE_BUS_SHARDS="1",
        MATCHER_WORKERS="2",
        DB_CONNECT_TIMEOUT="2",
        PYTHONUNBUFFERED="1",
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
        # The tests' one trader sends far more than a person would; limits are not tested here.
        RATE_LIMIT_DEFAULT_PER_SECOND="100000",
        RATE_LIMIT_DEFAULT_PER_MINUTE="10000000",
    )
    s = Stack(root=root, pg=pg, redis=rd, env=env)
    try:
        pg.start()
        pg.ensure_database("polysim")
        rd.start()
        migrated = s.manage("migrate", "--noinput", timeout=300)
        assert migrated.returncode == 0, migrated.stderr[-3000:]
        seeded = subprocess.run(
            [sys.executable, "-m", "tests.faults.seed"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert seeded.returncode == 0, seeded.stderr[-3000:]
        s.seed = json.loads(seeded.stdout.strip().splitlines()[-1])
        s.feed = FakeFeed(rd.url(0))
        port = _free_port()
        s.web_url = f"http://127.0.0.1:{port}"
        s.spawn(
            "web",
            [sys.executable, "-m", "gunicorn", "config.wsgi:application",
             "--bind", f"127.0.0.1:{port}", "--workers", "2", "--worker-class", "gthread",
             "--threads", "4", "--timeout", "30", "--graceful-timeout", "5"],
        )  # fmt: skip
        s.spawn(
            "matcher",
            [sys.executable, "manage.py", "trading", "match", "--shard", "0/1",
             "--stats-file", str(root / "matcher.json")],
        )  # fmt: skip
        with s.trader() as client:

            def web_up() -> bool:
                s.alive()
                with contextlib.suppress(httpx.TransportError):
                    return client.get("/v1/accounts").status_code == 200
                return False

            wait_for(web_up, "the web process answering", PROCESS_START_SECONDS)
        wait_for(
            lambda: s.alive() or s.matcher_state().get("state") == "running",
            "the matcher running",
            PROCESS_START_SECONDS,
        )
        yield s
    finally:
        for proc in s.procs.values():
            _stop_process(proc)
        if s.feed is not None:
            s.feed.stop()
        with contextlib.suppress(Exception):
            rd.kill()
        with contextlib.suppress(Exception):
            pg.stop(mode="immediate")
