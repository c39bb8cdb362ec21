"""Tokens a trader looked at recently (market page, order ticket): the feed streams them
too, so a book opened in the UI becomes live even when nobody holds the token yet.

A Redis sorted set `md:watch` (settings.REDIS_URL; score = last view, epoch seconds), shared by
every web process and the feed."""

from __future__ import annotations

import time
from collections.abc import Iterable
from functools import cache

import redis
from django.conf import settings

KEY = "md:watch"
WATCH_SECONDS = 15 * 60


@cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)


def watch(token_ids: Iterable[str]) -> None:
    now = time.time()
    ids = [t for t in token_ids if t]
    if not ids:
        return
    pipe = _client(settings.REDIS_URL).pipeline(transaction=False)
    pipe.zadd(KEY, dict.fromkeys(ids, now))
    pipe.zremrangebyscore(KEY, "-inf", now - WATCH_SECONDS)
    pipe.execute()


def watched(max_age: float = WATCH_SECONDS) -> set[str]:
    since = time.time() - max_age
    members = _client(settings.REDIS_URL).zrangebyscore(KEY, since, "+inf")
    return {m.decode() if isinstance(m, bytes) else str(m) for m in members}
