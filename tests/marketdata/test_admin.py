"""The operators' view of market data: live book state per market and the feed health page."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from accounts.models import User
from marketdata.bus import BookTop, get_bus, reset_bus
from marketdata.models import FeedHealth, Market, Token

pytestmark = pytest.mark.django_db


def top(token_id: str, bid: str, ask: str, *, fresh: bool) -> BookTop:
    return BookTop(
        token_id=token_id, market="0xc", best_bid=bid, best_ask=ask, mid=None, spread=None,
        last_trade_price=None, last_trade_side=None, tick_size="0.01", timestamp_ms=1,
        hash="h", fresh=fresh, bids=[[bid, "10"]], asks=[[ask, "10"]],
        published_at=int(time.time() * 1000),
    )  # fmt: skip


@pytest.fixture
def operator(client):
    client.force_login(User.objects.create_superuser("ops@example.com", "pw"))
    return client


def test_market_list_shows_live_book_state_from_the_bus(operator, redis_url, settings):
    settings.REDIS_URL = redis_url
    reset_bus()
    market = Market.objects.create(condition_id="0xc", question="Will it rain?", volume=Decimal(5))
    Token.objects.create(market=market, token_id="yes-1", outcome="Yes", index=0)
    Token.objects.create(market=market, token_id="no-1", outcome="No", index=1)
    bus = get_bus()
    bus.publish(
        [top("yes-1", "0.45", "0.47", fresh=True), top("no-1", "0.53", "0.55", fresh=False)]
    )
    bus.heartbeat(0)  # the feed process is alive
    page = operator.get("/admin/marketdata/market/").content.decode()
    assert "0.45/0.47 fresh" in page
    assert "0.53/0.55 STALE" in page
    bus.heartbeat(0, at_ms=int(time.time() * 1000) - 60_000)  # ... and then it died
    assert "0.45/0.47 STALE" in operator.get("/admin/marketdata/market/").content.decode()
    bus.client.flushdb()  # nothing published for the market
    assert "no book" in operator.get("/admin/marketdata/market/").content.decode()
    reset_bus()


def test_feed_health_page_lists_each_shard(operator):
    FeedHealth.objects.create(shard=0, connections=2, messages=1234, stale_tokens=3, resyncs=7,
                              hash_mismatches=1, reconnects=4)  # fmt: skip
    page = operator.get("/admin/marketdata/feedhealth/").content.decode()
    assert "1234" in page and ">7<" in page.replace(" ", "")
