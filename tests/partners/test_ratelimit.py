"""Sliding-window rate limits per tenant and per key (docs/partner-api.md).

The limiter is one Lua script on the suite's Redis: its semantics, atomicity under real
threads, a store shared across clients, and failing open with a circuit breaker while the store
is down (an unreachable address, a server that never answers, and the test's own redis-server
stopped and restarted).
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from core.api import ratelimit
from core.api.ratelimit import RateLimitResult, rate_limit_breaker_reset, rate_limit_check

CLOSED_PORT_URL = "redis://127.0.0.1:1/0"


@pytest.fixture(autouse=True)
def _fresh_limiter() -> Iterator[None]:
    rate_limit_breaker_reset()
    yield
    rate_limit_breaker_reset()


def check(
    *, tenant: int = 1, key: str = "keyaaaaa", per_second: int = 5, per_minute: int = 100
) -> RateLimitResult:
    return rate_limit_check(
        tenant_id=tenant, key_prefix=key, per_second=per_second, per_minute=per_minute
    )


# --- semantics ---------------------------------------------------------------------------------


def test_admits_exactly_the_per_second_limit_and_counts_down():
    results = [check() for _ in range(7)]

    assert [r.allowed for r in results] == [True] * 5 + [False] * 2
    assert [r.remaining_per_second for r in results] == [4, 3, 2, 1, 0, 0, 0]
    # denied requests are not recorded: the minute window stays at 5 used
    assert [r.remaining_per_minute for r in results] == [99, 98, 97, 96, 95, 95, 95]
    assert all(not r.degraded for r in results)
    assert all(r.retry_after is None for r in results[:5])
    assert all(r.retry_after == 1 for r in results[5:])


def test_admits_exactly_the_per_minute_limit_with_retry_after_the_oldest_leaves():
    started = time.time()
    results = [check(per_second=100, per_minute=7) for _ in range(9)]

    assert sum(r.allowed for r in results) == 7
    assert [r.allowed for r in results[7:]] == [False, False]
    denied = results[-1]
    assert denied.remaining_per_minute == 0
    assert denied.remaining_per_second == 100 - 7
    assert 59 <= denied.retry_after <= 60
    assert math.floor(started) + 60 <= denied.reset_at <= math.ceil(time.time()) + 60


def test_two_keys_of_one_tenant_share_the_tenant_bucket():
    first_key = [check(key="keyaaaaa") for _ in range(3)]
    second_key = [check(key="keybbbbb") for _ in range(3)]

    assert [r.allowed for r in first_key] == [True, True, True]
    assert [r.allowed for r in second_key] == [True, True, False]
    # remaining is the minimum over tenant and key buckets: the tenant's 4th request leaves 1
    # even though the second key has used only one slot of its own
    assert second_key[0].remaining_per_second == 1
    assert check(key="keyaaaaa").allowed is False


def test_tenants_do_not_share_buckets():
    assert all(check(tenant=1).allowed for _ in range(5))
    assert check(tenant=1).allowed is False

    other = check(tenant=2, key="keyccccc")
    assert other.allowed is True
    assert other.remaining_per_second == 4


def test_second_window_slides():
    assert all(check().allowed for _ in range(5))
    assert check().allowed is False

    time.sleep(1.05)

    again = check()
    assert again.allowed is True
    assert again.remaining_per_second == 4
    assert again.remaining_per_minute == 100 - 6


def test_reset_is_when_the_oldest_request_leaves_the_minute_window():
    before = time.time()
    first = check()
    after = time.time()
    assert math.floor(before + 60) <= first.reset_at <= math.ceil(after + 60)

    time.sleep(0.3)
    assert check().reset_at == first.reset_at


def test_headers_carry_limits_and_retry_after_only_when_denied():
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


def test_concurrent_requests_against_a_per_minute_limit_admit_exactly_the_limit():
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


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        check(per_second=0)


def test_retry_after_waits_for_every_full_window():
    for _ in range(3):
        check(per_second=3, per_minute=3)
    time.sleep(0.5)
    denied = check(per_second=3, per_minute=3)
    assert denied.allowed is False
    assert denied.retry_after == 60  # the second window frees in 0.5 s, the minute one in 59.5 s


# --- Redis only ---------------------------------------------------------------------------------


def test_redis_burst_never_admits_more_than_the_limit_in_any_second(redis_url):
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
    log = redis.Redis.from_url(redis_url).zrange("rl:{t7}:m", 0, -1, withscores=True)
    scores = sorted(int(score) for _, score in log)
    assert len(scores) == len(admitted)
    assert all(later - earlier >= 1_000_000 for earlier, later in zip(scores, scores[5:]))


def test_redis_keys_share_one_hash_tag_per_tenant(redis_url):
    check(tenant=42, key="keyzzzzz")

    keys = sorted(k.decode() for k in redis.Redis.from_url(redis_url).keys("rl:*"))
    assert len(keys) == 4
    assert all(k.startswith("rl:{t42}:") for k in keys)


def test_redis_clients_of_different_processes_share_the_counts(redis_url, monkeypatch):
    for _ in range(3):
        assert check().allowed
    # A fresh client and pool, as another web process has.
    monkeypatch.setattr(ratelimit, "_handle", None)

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


def test_redis_stopped_fails_open_then_limiting_resumes_after_restart(
    private_redis, settings, monkeypatch, caplog
):
    monkeypatch.setattr(ratelimit, "BREAKER_SECONDS", 0.3)
    settings.REDIS_URL = private_redis.url(0)
    assert [check(per_second=100, per_minute=5).allowed for _ in range(6)] == [True] * 5 + [False]

    private_redis.stop()
    with caplog.at_level(logging.WARNING, logger="polysim.ratelimit"):
        during = [check(per_second=100, per_minute=5) for _ in range(10)]
    assert all(r.allowed and r.degraded for r in during)
    warnings = [r for r in caplog.records if r.name == "polysim.ratelimit"]
    assert warnings and all(r.levelno == logging.WARNING for r in warnings)
    assert "failing open" in warnings[0].getMessage()

    private_redis.start()  # back empty (nothing was saved): the windows start over
    time.sleep(0.35)  # the breaker lets the next call probe Redis again
    after = [check(per_second=100, per_minute=5) for _ in range(6)]
    assert [(r.allowed, r.degraded) for r in after] == [(True, False)] * 5 + [(False, False)]
    assert after[-1].retry_after is not None and 59 <= after[-1].retry_after <= 60
