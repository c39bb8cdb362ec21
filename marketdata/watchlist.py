"""Tokens a trader looked at recently (market page, order ticket): the feed streams them
too, so a book opened in the UI becomes live even when nobody holds the token yet.

Redis sorted set `md:watch` (score = last view, epoch seconds) when REDIS_URL is set, so
every web process and the feed share it; a process-local dict otherwise (embedded mode,
where the web server and the feed run in one process)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from functools import cache

import redis
from django.conf import settings

KEY = "md:watch"
WATCH_SECONDS = 15 * 60

_local: dict[str, float] = {}
_lock = threading.Lock()


@cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)


def watch(token_ids: Iterable[str]) -> None:
    now = time.time()
    ids = [t for t in token_ids if t]
    if not ids:
        return
    if settings.REDIS_URL:
        client = _client(settings.REDIS_URL)
        pipe = client.pipeline(transaction=False)
        pipe.zadd(KEY, dict.fromkeys(ids, now))
        pipe.zremrangebyscore(KEY, "-inf", now - WATCH_SECONDS)
        pipe.execute()
        return
    with _lock:
        for token_id in ids:
            _local[token_id] = now
        for token_id in [t for t, seen in _local.items() if seen < now - WATCH_SECONDS]:
            del _local[token_id]


def watched(max_age: float = WATCH_SECONDS) -> set[str]:
    since = time.time() - max_age
    if settings.REDIS_URL:
        members = _client(settings.REDIS_URL).zrangebyscore(KEY, since, "+inf")
        return {m.decode() if isinstance(m, bytes) else str(m) for m in members}
    with _lock:
        return {t for t, seen in _local.items() if seen >= since}


def clear_local() -> None:
    with _lock:
        _local.clear()
