"""`manage.py marketdata discover|stream` and the scheduled discovery task, end to end
against a fake Polymarket started in the test (settings point the real clients at it)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.core.management.base import CommandError

from devtools.fakepoly import DEMO_DATA_DIR, FakePolymarket
from marketdata import states
from marketdata.models import Market, MarketResolution
from marketdata.tasks import discover_markets
from tests.runtime import child_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def demo():
    server = FakePolymarket(DEMO_DATA_DIR).start_in_thread()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pointed_at(demo, settings):
    settings.POLYMARKET_GAMMA_URL = demo.gamma_url
    settings.POLYMARKET_CLOB_URL = demo.clob_url
    settings.POLYMARKET_WS_URL = demo.ws_url
    return demo


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("marketdata", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.django_db
def test_discover_end_to_end(pointed_at):
    out, err = run("discover", "--limit", "50", "--include-closed")

    assert "Discovered 10 markets" in out and "10 new" in out
    assert err == ""
    assert Market.objects.count() == 10
    assert Market.objects.filter(status=states.OPEN).count() == 9
    assert MarketResolution.objects.count() == 1
    assert any(t.startswith("/gamma/markets/keyset") for _, t in pointed_at.requests)

    out, _ = run("discover", "--limit", "50", "--include-closed")
    assert "0 new, 10 updated" in out
    assert Market.objects.count() == 10


@pytest.mark.django_db
def test_discover_open_only_with_a_limit(pointed_at):
    out, _ = run("discover", "--limit", "3")

    assert "Discovered 3 markets" in out
    assert Market.objects.count() == 3


@pytest.mark.django_db
def test_discover_with_explicit_urls_and_an_unreachable_gamma(demo, settings):
    settings.POLYMARKET_GAMMA_URL = "http://127.0.0.1:9/none"
    out, _ = run("discover", "--gamma-url", demo.gamma_url, "--clob-url", demo.clob_url)
    assert "Discovered 9 markets" in out

    url = demo.gamma_url
    demo.stop()
    with pytest.raises(CommandError, match="failed"):
        run("discover", "--gamma-url", url)


@pytest.mark.django_db
def test_scheduled_task_discovers(pointed_at):
    result = discover_markets.delay(limit=20).get()

    assert result["markets_created"] == 9 and result["errors"] == []
    assert django_settings.CELERY_BEAT_SCHEDULE["marketdata-discover"] == {
        "task": "marketdata.tasks.discover_markets",
        "schedule": 600.0,
    }


@pytest.fixture
def stream(settings, redis_url):
    """`manage.py marketdata stream --shard 0/1` as a real process on the default feed
    settings: discovered markets in the database, the fake Polymarket as the exchange, books
    on the Redis price bus. Yields (the process, a token it streams, the bus)."""

    from marketdata.bus import RedisBus
    from marketdata.clients import ClobClient, GammaClient
    from marketdata.models import Token
    from marketdata.services import discover

    server = FakePolymarket(DEMO_DATA_DIR).start_in_thread()
    proc = None
    try:
        with GammaClient(server.gamma_url) as gamma, ClobClient(server.clob_url) as clob:
            discover(gamma=gamma, clob=clob, limit=100, include_closed=False)
        token = Token.objects.filter(market__status="open").first().token_id
        env = child_env(
            POLYMARKET_GAMMA_URL=server.gamma_url,
            POLYMARKET_CLOB_URL=server.clob_url,
            POLYMARKET_WS_URL=server.ws_url,
        )
        for name in ("MARKETDATA_WS_PING_SECONDS", "PRICE_BUS_HEARTBEAT_STALE_SECONDS"):
            env.pop(name, None)  # the defaults are under test
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "marketdata", "stream", "--shard", "0/1"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        bus = RedisBus.from_url(redis_url)
        deadline = time.monotonic() + 20
        while not bus.latest_live(token).live:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no live book on the bus"
            time.sleep(0.05)
        yield proc, token, bus
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        server.stop()


@pytest.mark.django_db(transaction=True)
def test_stream_process_publishes_fresh_books_and_stops_cleanly(stream):
    from marketdata.models import FeedHealth

    proc, token, bus = stream
    top = bus.latest(token)
    assert top is not None and (top.best_bid is not None or top.best_ask is not None)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, proc.stderr.read().decode()[-2000:]
    health = FeedHealth.objects.get(shard=0)
    assert health.messages > 0 and health.subscribed_tokens > 0 and health.bus_error == ""


@pytest.mark.django_db(transaction=True)
def test_a_killed_stream_process_leaves_no_live_book_after_2_s(stream):
    """kill -9: nothing publishes the books stale, they stay `fresh`; the heartbeat stops, so
    within PRICE_BUS_HEARTBEAT_STALE_SECONDS (2 s) of the last beat no reader may act on them."""
    proc, token, bus = stream
    proc.kill()
    killed = time.monotonic()
    while bus.latest_live(token).live:
        assert time.monotonic() - killed < 3, "still live 3 s after the kill"
        time.sleep(0.01)
    assert time.monotonic() - killed < 2.0 + 0.1  # 2 s after the last beat, before the kill
    top = bus.latest(token)
    assert top is not None and top.fresh


@pytest.mark.parametrize("shard", ["2/2", "-1/3", "1/0", "x/2", "3"])
def test_stream_refuses_a_shard_outside_the_range(shard):
    with pytest.raises(CommandError, match="--shard"):
        run("stream", "--shard", shard, "--shards", "2")


def test_shard_forms():
    from marketdata.management.commands.marketdata import parse_shard

    assert parse_shard("1/4", None) == (1, 4)
    assert parse_shard("1", 4) == (1, 4)
    assert parse_shard("0/1", None) == (0, 1)
