"""API rate limits: atomic sliding windows per tenant (or trader) and per API key.

Four sliding-window logs are checked and updated in one atomic step: tenant/second,
tenant/minute, key/second, key/minute. The tenant bucket counts every key of the tenant; both
buckets use the tenant's limits (docs/partner-api.md). A request is admitted only if all four
windows have room; only admitted requests are recorded, so a client hammering a full window
does not extend its own ban.

The logs are Redis sorted sets (settings.REDIS_URL) updated by one Lua script, with the Redis
server's clock, so every web process shares the counts and agrees on time. DRF's throttles do a
read-modify-write on the cache and admit more than the limit under concurrency; the script
cannot.

If Redis cannot be reached the request passes (fail open, docs/operations.md) and a warning is
logged; a circuit breaker then skips Redis for BREAKER_SECONDS so an outage costs one timeout
per process per period instead of one per request.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass

import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger("polysim.ratelimit")

SECOND_WINDOW_S = 1
MINUTE_WINDOW_S = 60
BREAKER_SECONDS = 2.0
REDIS_CONNECT_TIMEOUT_S = 0.2
REDIS_SOCKET_TIMEOUT_S = 0.2


@dataclass(frozen=True)
class RateLimitResult:
    """The verdict for one request plus what the response headers must say."""

    allowed: bool
    limit_per_second: int
    remaining_per_second: int
    limit_per_minute: int
    remaining_per_minute: int
    reset_at: int  # unix seconds: when the oldest request in the minute window leaves it
    retry_after: int | None  # whole seconds >= 1, set when denied
    degraded: bool  # limiter store unreachable: the request passed (fail open)

    def headers(self) -> dict[str, str]:
        """The X-RateLimit-* headers every partner response carries (minute window in the
        unsuffixed ones), plus Retry-After on a denial."""
        headers = {
            "X-RateLimit-Limit": str(self.limit_per_minute),
            "X-RateLimit-Remaining": str(self.remaining_per_minute),
            "X-RateLimit-Reset": str(self.reset_at),
            "X-RateLimit-Limit-Per-Second": str(self.limit_per_second),
            "X-RateLimit-Remaining-Per-Second": str(self.remaining_per_second),
        }
        if not self.allowed and self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return headers


def rate_limit_check(
    *, tenant_id: int, key_prefix: str, per_second: int, per_minute: int
) -> RateLimitResult:
    """Count one request of API key `key_prefix` of tenant `tenant_id` against the tenant's
    limits and say whether it may proceed.

    Atomic: the check and the recording of all four windows happen in one Redis script, so N
    concurrent callers can never all see the last free slot. Not idempotent: every call that
    is admitted consumes a slot.
    Never raises for store failures: an unreachable Redis yields allowed=True, degraded=True.
    """
    if per_second <= 0 or per_minute <= 0:
        raise ValueError("rate limits must be positive")
    return _redis_check(
        str(settings.REDIS_URL),
        tenant_id=tenant_id,
        key_prefix=key_prefix,
        per_second=per_second,
        per_minute=per_minute,
    )


def rate_limit_breaker_reset() -> None:
    """Close this process's circuit breaker: the next call tries Redis again (tests)."""
    _breaker.reset()


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _fail_open(per_second: int, per_minute: int) -> RateLimitResult:
    return RateLimitResult(
        allowed=True,
        limit_per_second=per_second,
        remaining_per_second=per_second,
        limit_per_minute=per_minute,
        remaining_per_minute=per_minute,
        reset_at=int(time.time()) + MINUTE_WINDOW_S,
        retry_after=None,
        degraded=True,
    )


# --- Redis ----------------------------------------------------------------------------------

# KEYS: tenant/second, tenant/minute, key/second, key/minute (all under one hash tag).
# ARGV: per_second, per_minute, a unique nonce for the sorted-set member.
# Scores are microseconds of the Redis clock, formatted with %.0f because Lua 5.1's default
# number-to-string conversion keeps only 14 significant digits.
# Returns {allowed, remaining_per_second, remaining_per_minute, now_us, oldest_minute_us,
# retry_us}; oldest_minute_us is 0 when the minute windows are empty.
_LUA_SLIDING_WINDOWS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit_s = tonumber(ARGV[1])
local limit_m = tonumber(ARGV[2])
local limits = {limit_s, limit_m, limit_s, limit_m}
local windows = {1000000, 60000000, 1000000, 60000000}
local ttl_ms = {'2000', '61000', '2000', '61000'}
local counts = {}
local allowed = 1
local retry = 0
for i = 1, 4 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', string.format('%.0f', now - windows[i]))
  local n = redis.call('ZCARD', KEYS[i])
  counts[i] = n
  if n >= limits[i] then
    allowed = 0
    -- a slot frees when the entry at index n - limit (oldest first) leaves the window
    local entry = redis.call('ZRANGE', KEYS[i], n - limits[i], n - limits[i], 'WITHSCORES')
    local wait = tonumber(entry[2]) + windows[i] - now
    if wait > retry then retry = wait end
  end
end
local score = string.format('%.0f', now)
if allowed == 1 then
  local member = score .. ':' .. ARGV[3]
  for i = 1, 4 do
    redis.call('ZADD', KEYS[i], score, member)
    redis.call('PEXPIRE', KEYS[i], ttl_ms[i])
    counts[i] = counts[i] + 1
  end
end
local oldest = 0
for _, i in ipairs({2, 4}) do
  local first = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
  if first[2] then
    local s = tonumber(first[2])
    if oldest == 0 or s < oldest then oldest = s end
  end
end
return {
  allowed,
  math.min(limits[1] - counts[1], limits[3] - counts[3]),
  math.min(limits[2] - counts[2], limits[4] - counts[4]),
  score,
  string.format('%.0f', oldest),
  string.format('%.0f', retry),
}
"""


def _bucket_keys(tenant_id: int, key_prefix: str) -> list[str]:
    """Redis keys of the four windows. One hash tag per tenant keeps them in one cluster
    slot, which a multi-key script requires on Redis Cluster."""
    tag = f"rl:{{t{tenant_id}}}"
    return [f"{tag}:s", f"{tag}:m", f"{tag}:k:{key_prefix}:s", f"{tag}:k:{key_prefix}:m"]


class _RedisHandle:
    """One connection pool and registered script per process, rebuilt if REDIS_URL changes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pool = redis.ConnectionPool.from_url(
            url,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            # No client-side retries: a second attempt only doubles the stall while Redis is
            # down, and the limiter fails open anyway.
            retry=Retry(NoBackoff(), 0),
        )
        self.client = redis.Redis(connection_pool=self.pool)
        self.script = self.client.register_script(_LUA_SLIDING_WINDOWS)


_handle: _RedisHandle | None = None
_handle_lock = threading.Lock()


def _redis_handle(url: str) -> _RedisHandle:
    global _handle
    handle = _handle  # one read of the global; the fast path takes no lock
    if handle is not None and handle.url == url:
        return handle
    with _handle_lock:
        if _handle is None or _handle.url != url:
            old = _handle
            _handle = _RedisHandle(url)
            _breaker.reset()
            if old is not None:
                old.pool.disconnect(inuse_connections=False)
        return _handle


class _CircuitBreaker:
    """Open for BREAKER_SECONDS after a failure. When the period ends, one caller probes
    Redis while the others keep skipping it, so a dead Redis never sees a thundering herd."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open_until = 0.0

    def allow(self) -> bool:
        with self._lock:
            if self._open_until == 0.0:
                return True
            now = time.monotonic()
            if now < self._open_until:
                return False
            self._open_until = now + BREAKER_SECONDS  # this caller is the probe
            return True

    def success(self) -> None:
        if self._open_until:
            with self._lock:
                self._open_until = 0.0

    def trip(self) -> None:
        with self._lock:
            self._open_until = time.monotonic() + BREAKER_SECONDS

    def reset(self) -> None:
        with self._lock:
            self._open_until = 0.0


_breaker = _CircuitBreaker()


def _redis_check(
    url: str, *, tenant_id: int, key_prefix: str, per_second: int, per_minute: int
) -> RateLimitResult:
    handle = _redis_handle(url)  # no I/O: connections are opened lazily by the pool
    if not _breaker.allow():
        return _fail_open(per_second, per_minute)
    try:
        reply = handle.script(
            keys=_bucket_keys(tenant_id, key_prefix),
            args=[per_second, per_minute, uuid.uuid4().hex],
        )
    except redis.RedisError as exc:
        _breaker.trip()
        logger.warning(
            "rate limiter store unreachable, failing open for %.1f s (tenant %s): %s: %s",
            BREAKER_SECONDS,
            tenant_id,
            type(exc).__name__,
            exc,
        )
        return _fail_open(per_second, per_minute)
    _breaker.success()
    allowed_flag, rem_s, rem_m, now_us, oldest_us, retry_us = (int(v) for v in reply)
    allowed = allowed_flag == 1
    if oldest_us:
        reset_at = _ceil_div(oldest_us + MINUTE_WINDOW_S * 1_000_000, 1_000_000)
    else:
        reset_at = now_us // 1_000_000 + MINUTE_WINDOW_S
    return RateLimitResult(
        allowed=allowed,
        limit_per_second=per_second,
        remaining_per_second=max(rem_s, 0),
        limit_per_minute=per_minute,
        remaining_per_minute=max(rem_m, 0),
        reset_at=reset_at,
        retry_after=None if allowed else max(1, _ceil_div(retry_us, 1_000_000)),
        degraded=False,
    )
