"""Sliding-window rate limits per tenant and per key (partner-api.md §3, reliability.md T8).

The semantic tests run against both limiters: the in-process one and the Redis script
(`redis` marker). Redis-only tests cover atomicity under real threads, a shared store across
clients, and failing open with a circuit breaker while the store is down.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from partners import ratelimit
from partners.ratelimit import RateLimitResult, rate_limit_check, rate_limit_reset_local

CLOSED_PORT_URL = "redis://127.0.0.1:1/0"


@pytest.fixture(autouse=True)
def _fresh_limiter() -> Iterator[None]:
    rate_limit_reset_local()
    yield
    rate_limit_reset_local()


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request, settings) -> str:
    """Run the test against the in-process limiter and against Redis."""
    if request.param == "redis":
        settings.REDIS_URL = request.getfixturevalue("redis_url")
    else:
        settings.REDIS_URL = ""
    return request.param


@pytest.fixture
def redis_backend(redis_url, settings) -> str:
    settings.REDIS_URL = redis_url
    return redis_url


def check(
    *, tenant: int = 1, key: str = "keyaaaaa", per_second: int = 5, per_minute: int = 100
) -> RateLimitResult:
    return rate_limit_check(
        tenant_id=tenant, key_prefix=key, per_second=per_second, per_minute=per_minute
    )


# --- semantics, both limiters -----------------------------------------------------------------


def test_admits_exactly_the_per_second_limit_and_counts_down(backend):
    results = [check() for _ in range(7)]

    assert [r.allowed for r in results] == [True] * 5 + [False] * 2
    assert [r.remaining_per_second for r in results] == [4, 3, 2, 1, 0, 0, 0]
    # denied requests are not recorded: the minute window stays at 5 used
    assert [r.remaining_per_minute for r in results] == [99, 98, 97, 96, 95, 95, 95]
    assert all(not r.degraded for r in results)
    assert all(r.retry_after is None for r in results[:5])
    assert all(r.retry_after == 1 for r in results[5:])


def test_admits_exactly_the_per_minute_limit_with_retry_after_the_oldest_leaves(backend):
    started = time.time()
    results = [check(per_second=100, per_minute=7) for _ in range(9)]

    assert sum(r.allowed for r in results) == 7
    assert [r.allowed for r in results[7:]] == [False, False]
    denied = results[-1]
    assert denied.remaining_per_minute == 0
    assert denied.remaining_per_second == 100 - 7
    assert 59 <= denied.retry_after <= 60
    assert math.floor(started) + 60 <= denied.reset_at <= math.ceil(time.time()) + 60


def test_two_keys_of_one_tenant_share_the_tenant_bucket(backend):
    first_key = [check(key="keyaaaaa") for _ in range(3)]
    second_key = [check(key="keybbbbb") for _ in range(3)]

    assert [r.allowed for r in first_key] == [True, True, True]
    assert [r.allowed for r in second_key] == [True, True, False]
    # remaining is the minimum over tenant and key buckets: the tenant's 4th request leaves 1
    # even though the second key has used only one slot of its own
    assert second_key[0].remaining_per_second == 1
    assert check(key="keyaaaaa").allowed is False


def test_tenants_do_not_share_buckets(backend):
    assert all(check(tenant=1).allowed for _ in range(5))
    assert check(tenant=1).allowed is False

    other = check(tenant=2, key="keyccccc")
    assert other.allowed is True
    assert other.remaining_per_second == 4


def test_second_window_slides(backend):
    assert all(check().allowed for _ in range(5))
    assert check().allowed is False

    time.sleep(1.05)

    again = check()
    assert again.allowed is True
    assert again.remaining_per_second == 4
    assert again.remaining_per_minute == 100 - 6


def test_reset_is_when_the_oldest_request_leaves_the_minute_window(backend):
    before = time.time()
    first = check()
    after = time.time()
    assert math.floor(before + 60) <= first.reset_at <= math.ceil(after + 60)

    time.sleep(0.3)
    assert check().reset_at == first.reset_at


def test_headers_carry_limits_and_retry_after_only_when_denied(backend):
    allowed = [check(per_second=2, per_minute=10) for _ in range(2)][-1]
    denied = check(per_second=2, per_minute=10)

    assert allowed.headers() == {
        "X-RateLimit-Limit": "10",
        "X-RateLimit-Remaining": "8",
        "X-RateLimit-Reset": str(allowed.reset_at),
        "X-RateLimit-Limit-Per-Second": "2",
        "X-RateLimit-Remaining-Per-Second": "0",
    }
    assert denied.headers()["Retry-After"] == "1"
    assert denied.headers()["X-RateLimit-Remaining"] == "8"


def test_concurrent_requests_against_a_per_minute_limit_admit_exactly_the_limit(backend):
    """T8: 2·L requests from 50 concurrent workers, alternating two keys of one tenant."""
    limit, workers, per_worker = 100, 50, 4
    barrier = threading.Barrier(workers)
    results: list[RateLimitResult] = []
    results_lock = threading.Lock()

    def worker(n: int) -> None:
        barrier.wait()
        for i in range(per_worker):
            key = "keyaaaaa" if (n + i) % 2 else "keybbbbb"
            result = check(key=key, per_second=10_000, per_minute=limit)
            with results_lock:
                results.append(result)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(results) == 2 * limit
    assert not any(r.degraded for r in results)
    assert sum(r.allowed for r in results) == limit
    denied = [r for r in results if not r.allowed]
    assert all(r.retry_after and r.retry_after >= 1 for r in denied)
    assert all("Retry-After" in r.headers() for r in denied)


def test_limits_must_be_positive(backend):
    with pytest.raises(ValueError):
        check(per_second=0)


# --- in-process limiter only --------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def local_clock(settings, monkeypatch) -> FakeClock:
    settings.REDIS_URL = ""
    clock = FakeClock()
    monkeypatch.setattr(ratelimit, "_clock", clock)
    return clock


def test_local_minute_window_slides_on_the_clock(local_clock):
    admitted = []
    for offset in (0, 10, 20):
        local_clock.now = 1000.0 + offset
        admitted.append(check(per_minute=3).allowed)
    assert admitted == [True, True, True]

    local_clock.now = 1030.0
    denied = check(per_minute=3)
    assert denied.allowed is False
    assert denied.retry_after == 30  # the request at t=0 leaves at t=60

    local_clock.now = 1060.0
    readmitted = check(per_minute=3)
    assert readmitted.allowed is True
    assert readmitted.remaining_per_minute == 0
    # the oldest request still in the window is the one at t=10: it leaves in 10 s
    assert abs(readmitted.reset_at - (time.time() + 10)) <= 1


def test_local_retry_after_waits_for_every_full_window(local_clock):
    for _ in range(3):
        check(per_second=3, per_minute=3)
    local_clock.now += 0.5
    denied = check(per_second=3, per_minute=3)
    assert denied.allowed is False
    assert denied.retry_after == 60  # the second window frees in 0.5 s, the minute one in 59.5 s


def test_local_memory_is_bounded_by_dropping_empty_buckets(local_clock):
    for tenant in range(1, 51):
        check(tenant=tenant)
    assert len(ratelimit._local._buckets) == 50 * 4

    local_clock.now += 61  # every window has emptied; the next call sweeps
    check(tenant=999)

    assert len(ratelimit._local._buckets) == 4


def test_reset_local_forgets_the_windows(local_clock):
    for _ in range(5):
        check()
    assert check().allowed is False

    rate_limit_reset_local()

    assert check().allowed is True


# --- Redis only ---------------------------------------------------------------------------------


def test_redis_burst_never_admits_more_than_the_limit_in_any_second(redis_backend):
    """100 real threads released by a barrier, in 10 waves of 10 simultaneous requests spread
    over 2 s, against 5/s."""
    n, wave_size, wave_gap = 100, 10, 0.2
    barrier = threading.Barrier(n)
    spans: list[tuple[float, float, RateLimitResult]] = [None] * n  # type: ignore[list-item]

    def worker(i: int) -> None:
        barrier.wait()
        time.sleep((i // wave_size) * wave_gap)
        started = time.time()
        result = check(tenant=7, per_second=5, per_minute=1000)
        spans[i] = (started, time.time(), result)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert not any(result.degraded for _, _, result in spans)
    admitted = sorted((start, end) for start, end, result in spans if result.allowed)
    assert 5 <= len(admitted) <= 15

    # Wall clock, as the caller saw it: each admission happened somewhere inside
    # [start, end]. Six admissions whose spans all fit inside one second would prove that a
    # second-long window held six.
    for window_start, _ in admitted:
        inside = [
            1 for start, end in admitted if start >= window_start and end < window_start + 1.0
        ]
        assert len(inside) <= 5

    # Exact, on the limiter's own clock: the tenant's minute log holds every admission time.
    log = redis.Redis.from_url(redis_backend).zrange("rl:{t7}:m", 0, -1, withscores=True)
    scores = sorted(int(score) for _, score in log)
    assert len(scores) == len(admitted)
    assert all(later - earlier >= 1_000_000 for earlier, later in zip(scores, scores[5:]))


def test_redis_keys_share_one_hash_tag_per_tenant(redis_backend):
    check(tenant=42, key="keyzzzzz")

    keys = sorted(k.decode() for k in redis.Redis.from_url(redis_backend).keys("rl:*"))
    assert len(keys) == 4
    assert all(k.startswith("rl:{t42}:") for k in keys)


def test_redis_clients_of_different_processes_share_the_counts(redis_backend, settings):
    for _ in range(3):
        assert check().allowed
    # Another spelling of the same server rebuilds the client: a fresh pool, as another web
    # process would have.
    settings.REDIS_URL = redis_backend.replace("127.0.0.1", "localhost")

    assert [check().allowed for _ in range(3)] == [True, True, False]


# --- failing open -------------------------------------------------------------------------------


def test_unreachable_redis_fails_open_logs_and_skips_redis_while_the_breaker_is_open(
    settings, caplog
):
    settings.REDIS_URL = CLOSED_PORT_URL

    with caplog.at_level(logging.WARNING, logger="polysim.ratelimit"):
        first = check(per_second=5, per_minute=100)
        started = time.monotonic()
        burst = [check(per_second=5, per_minute=100) for _ in range(50)]
        elapsed = time.monotonic() - started

    assert first.allowed and first.degraded
    assert (first.remaining_per_second, first.remaining_per_minute) == (5, 100)
    assert first.retry_after is None
    assert all(r.allowed and r.degraded for r in burst)
    assert elapsed < 1.0
    warnings = [r for r in caplog.records if r.name == "polysim.ratelimit"]
    assert len(warnings) == 1  # the breaker spares the log as well as the network
    assert warnings[0].levelno == logging.WARNING


def test_a_redis_that_never_answers_times_out_fast_and_fails_open(settings, caplog):
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never replies
    try:
        settings.REDIS_URL = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="polysim.ratelimit"):
            results = [check() for _ in range(20)]
        elapsed = time.monotonic() - started
    finally:
        silent.close()

    assert all(r.allowed and r.degraded for r in results)
    assert elapsed < 1.0
    assert any(r.name == "polysim.ratelimit" for r in caplog.records)


class FlakyProxy:
    """A TCP proxy in front of the real Redis that can be cut and restored."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            self._sockets.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_redis_outage_fails_open_then_limiting_resumes_after_the_breaker(
    redis_url, settings, monkeypatch, caplog
):
    monkeypatch.setattr(ratelimit, "BREAKER_SECONDS", 0.3)
    info = redis.connection.parse_url(redis_url)
    proxy = FlakyProxy((info.get("host", "127.0.0.1"), int(info.get("port", 6379))))
    try:
        settings.REDIS_URL = f"redis://127.0.0.1:{proxy.port}/{info.get('db', 0)}"
        assert [check(per_second=100, per_minute=5).allowed for _ in range(3)] == [True, True, True]

        proxy.cut()
        with caplog.at_level(logging.WARNING, logger="polysim.ratelimit"):
            during = [check(per_second=100, per_minute=5) for _ in range(10)]
        assert all(r.allowed and r.degraded for r in during)
        assert caplog.records

        proxy.restore()
        assert (
            check(per_second=100, per_minute=5).degraded is True
        )  # still inside the breaker period
        time.sleep(0.35)
        after = [check(per_second=100, per_minute=5) for _ in range(3)]
    finally:
        proxy.close()

    # the three requests before the outage still count; the degraded ones were never recorded
    assert [(r.allowed, r.degraded) for r in after] == [
        (True, False),
        (True, False),
        (False, False),
    ]
