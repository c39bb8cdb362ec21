"""The feed heals itself (marketdata/ingest.py, "Redis outages" and "Heartbeat"): the ingester
against the fake Polymarket on loopback and a private Redis the test stops and restarts.
Everything is asserted as a reader sees it: `latest_live` (a trader's order would take this
book) and the published top."""

from __future__ import annotations

import functools
import time

import pytest
import redis

from marketdata.bus import RedisBus
from tests.marketdata.test_ingest import FEED_CLIENT, TOKEN_A, ingesters, wait_for
from tests.marketdata.test_ingest import sequence as sequence  # a fixture


@pytest.fixture
def feed(fake, private_redis, django_db_blocker):
    for start in ingesters(fake, private_redis.url(0), django_db_blocker):
        yield functools.partial(start, [TOKEN_A])


def reader(private_redis) -> RedisBus:
    """A reader's bus (the web or the matcher), on the default 2 s heartbeat threshold."""
    return RedisBus.from_url(private_redis.url(0), client_options=FEED_CLIENT)


def live_hash(bus: RedisBus) -> str | None:
    top, live = bus.latest_live(TOKEN_A)
    return top.hash if top is not None and live else None


@pytest.mark.parametrize("restart", ["empty", "from its dump"])
def test_after_redis_restarts_the_books_are_live_again_and_moving_within_10_s(
    fake, feed, private_redis, sequence, restart
):
    runner = feed(ping=0.5, heartbeat=0.5)
    bus = reader(private_redis)
    wait_for(lambda: bus.latest_live(TOKEN_A).live, what="live before the outage")
    if restart == "from its dump":
        redis.Redis.from_url(private_redis.url(0)).save()  # the dump: this book, a young beat
        fake.replay(sequence[:20])  # the book moves on after the dump was written
        wait_for(lambda: runner.ingester.keeper.stats.entries_applied >= 19, what="moved")
        time.sleep(0.1)
        private_redis.kill()  # a crash: the next start loads the older dump
    else:
        private_redis.stop()
    time.sleep(1.0)  # down: the feed's publishes and beats fail meanwhile
    wait_for(lambda: runner.ingester.health.bus_error != "", what="the outage noticed")
    fake.replay(sequence[20:30])  # the exchange moves on while Redis is down
    private_redis.start()
    back = time.monotonic()
    current = runner.ingester.keeper.book(TOKEN_A)
    assert current is not None
    wait_for(lambda: live_hash(bus) == current.hash, timeout=10, what="live, current book")
    assert time.monotonic() - back < 10
    assert runner.ingester.health.bus_error == ""
    fake.replay(sequence[30:])  # and moving: the rest of the recording reaches the bus
    final = sequence[-1]
    wait_for(lambda: live_hash(bus) == final["hash"], timeout=10, what="the final book, live")


def test_a_wedged_or_killed_feed_is_not_live_within_2_s(feed, private_redis):
    """The feed process stops without closing anything (its loop wedged: what a kill -9 looks
    like to Redis; tests/marketdata/test_commands.py kills a real process)."""
    runner = feed(ping=5, heartbeat=0.5)  # the production beat
    bus = reader(private_redis)
    wait_for(lambda: bus.latest_live(TOKEN_A).live, what="live")
    runner.loop.call_soon_threadsafe(time.sleep, 4)  # nothing runs on the feed's loop now
    stopped = time.monotonic()
    took = wait_for(lambda: not bus.latest_live(TOKEN_A).live, timeout=3, what="not live")
    # 2 s after the last beat, which came before the wedge (the margin: this loop's polling)
    assert took < 2.0 + 0.1
    top = bus.latest(TOKEN_A)
    assert top is not None and top.fresh  # only the heartbeat tells
    wait_for(lambda: bus.latest_live(TOKEN_A).live, timeout=10, what="live again")
    assert time.monotonic() - stopped > 3


def test_a_silent_socket_goes_stale_within_6_s_then_live_again(fake, feed, private_redis):
    """On the default cadence (PING every 2 s, dead after 5 s without a frame)."""
    runner = feed(ping=2.0, dead_seconds=5.0, heartbeat=0.5)
    bus = reader(private_redis)
    wait_for(lambda: bus.latest_live(TOKEN_A).live, what="live")
    fake.pause()  # the server keeps the TCP connection and stops answering, PONGs included
    paused = time.monotonic()
    try:
        took = wait_for(lambda: not bus.latest_live(TOKEN_A).live, timeout=8, what="stale")
        assert took < 6.0
        top = bus.latest(TOKEN_A)
        assert top is not None and not top.fresh  # published stale by the feed itself
    finally:
        fake.resume()
    wait_for(lambda: bus.latest_live(TOKEN_A).live, timeout=15, what="live on a new socket")
    assert runner.ingester.health.reconnects >= 1 and time.monotonic() - paused > took


def test_a_connection_task_that_ends_is_replaced_and_the_feed_stays_live(feed, private_redis):
    runner = feed(ping=0.5, heartbeat=0.2)
    bus = reader(private_redis)
    wait_for(lambda: bus.latest_live(TOKEN_A).live, what="live")
    conn = runner.ingester._connections[0]
    runner.loop.call_soon_threadsafe(conn.task.cancel)  # ended from outside: never by itself
    wait_for(lambda: runner.ingester.health.tasks_replaced >= 1, what="replaced")
    wait_for(lambda: bus.latest_live(TOKEN_A).live, timeout=10, what="live again")
