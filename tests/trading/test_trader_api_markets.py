"""Markets, books and price history on /v1/*: search, filters, keyset pages with live prices
from the price bus; the book straight from the bus (and the feed asked to stream it); price
history proxied from the (fake) Polymarket CLOB."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.services import trader_key_create
from accounts.services.trader_keys import key_cache
from devtools.fakepoly import DEMO_DATA_DIR, FakePolymarket
from marketdata import watchlist
from marketdata.apis import MarketOutput, market_body
from marketdata.bus import BookTop, get_bus, now_ms, reset_bus
from marketdata.models import Event, Market, MarketResolution, Token
from tests.factories import UserFactory
from tests.trading.conftest import feed_alive, feed_dead

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_state():
    key_cache.clear()
    reset_bus()
    feed_alive()  # a running feed beats every shard; tests of a dead feed age it on purpose
    yield
    reset_bus()


@pytest.fixture
def client():
    _, raw = trader_key_create(user=UserFactory(email="ana@example.com"), name="t")
    api = APIClient()
    api.credentials(HTTP_X_API_KEY=raw)
    return api


def make_market(
    n: int,
    question: str,
    *,
    volume: str = "0",
    status: str = "open",
    category: str = "",
    end_in_days: int | None = None,
    event: Event | None = None,
) -> Market:
    market = Market.objects.create(
        condition_id=f"0xc{n:03d}",
        question=question,
        slug=question.lower().replace(" ", "-").strip("?"),
        category=category,
        volume=Decimal(volume),
        status=status,
        tick_size=Decimal("0.01"),
        min_order_size=Decimal("5"),
        accepting_orders=status == "open",
        end_date=timezone.now() + dt.timedelta(days=end_in_days) if end_in_days else None,
        event=event,
    )
    Token.objects.create(market=market, token_id=f"{n}001", outcome="Yes", index=0)
    Token.objects.create(market=market, token_id=f"{n}002", outcome="No", index=1)
    return market


def top(token_id: str, bid: str, ask: str, *, fresh: bool = True) -> BookTop:
    mid = str((Decimal(bid) + Decimal(ask)) / 2)
    return BookTop(
        token_id=token_id,
        market="0xc",
        best_bid=bid,
        best_ask=ask,
        mid=mid,
        spread=str(Decimal(ask) - Decimal(bid)),
        last_trade_price=bid,
        last_trade_side="SELL",
        tick_size="0.01",
        timestamp_ms=1_767_225_600_000,
        hash="h" * 40,
        fresh=fresh,
        bids=[[bid, "100"], ["0.1", "5"]],
        asks=[[ask, "40"]],
        published_at=now_ms(),
    )


def test_markets_are_open_ones_biggest_first_with_live_quotes(client):
    small = make_market(1, "Will it rain?", volume="10")
    big = make_market(2, "Will it snow?", volume="5000")
    make_market(3, "Was it sunny?", volume="99999", status="resolved")
    get_bus().publish([top("2001", "0.40", "0.42"), top("2002", "0.58", "0.60", fresh=False)])

    body = client.get("/v1/markets").json()

    assert [m["condition_id"] for m in body["data"]] == [big.condition_id, small.condition_id]
    assert body["has_more"] is False and body["next_cursor"] is None
    yes, no = body["data"][0]["tokens"]
    assert yes == {
        "token_id": "2001",
        "outcome": "Yes",
        "index": 0,
        "best_bid": "0.40",
        "best_ask": "0.42",
        "mid": "0.41",
        "spread": "0.02",
        "last_trade_price": "0.40",
        "tick_size": "0.01",
        "fresh": True,
        "price_as_of": "2026-01-01T00:00:00Z",
    }
    assert no["fresh"] is False and no["mid"] == "0.59"
    quiet = body["data"][1]["tokens"][0]
    assert quiet["best_bid"] is None and quiet["fresh"] is False
    assert body["data"][0]["volume"] == "5000.00" and body["data"][0]["tick_size"] == "0.01"


def test_markets_body_matches_its_documented_shape(client):
    event = Event.objects.create(gamma_id="e1", slug="weather", title="Weather")
    market = make_market(1, "Will it rain?", event=event)
    body = client.get("/v1/markets").json()["data"][0]
    assert set(body) == set(MarketOutput().fields)
    assert body["event"] == {"slug": "weather", "title": "Weather"}
    assert body == market_body(Market.objects.get(pk=market.pk), {})


def test_markets_search_category_and_status_filters(client):
    make_market(1, "Will Lakers win?", category="Sports", volume="3")
    make_market(2, "Will BTC hit 100k?", category="Crypto", volume="2")
    make_market(3, "Will Celtics win?", category="sports", volume="1", status="closed")

    def ids(query: str) -> list[str]:
        response = client.get(f"/v1/markets?{query}")
        assert response.status_code == 200, response.content
        return [m["condition_id"] for m in response.json()["data"]]

    assert ids("q=win") == ["0xc001"]
    assert ids("q=WIN&status=all") == ["0xc001", "0xc003"]
    assert ids("q=btc-hit") == ["0xc002"]  # slug
    assert ids("category=sports&status=all") == ["0xc001", "0xc003"]
    assert ids("status=closed") == ["0xc003"]
    bad = client.get("/v1/markets?status=bogus")
    assert bad.status_code == 422 and "status" in bad.json()["details"]


def test_markets_ending_soon_sorts_by_end_date_and_skips_past_or_undated(client):
    make_market(1, "Later?", end_in_days=30, volume="100")
    make_market(2, "Sooner?", end_in_days=2)
    make_market(3, "Undated?")
    make_market(4, "Overdue?", end_in_days=-1)
    body = client.get("/v1/markets?sort=ending_soon").json()
    assert [m["question"] for m in body["data"]] == ["Sooner?", "Later?"]


def test_markets_keyset_pages_with_one_bus_read_per_page(client, monkeypatch):
    for n in range(1, 8):
        make_market(n, f"Market {n}?", volume=str(n % 3))  # ties on volume
    bus = get_bus()
    bus.publish([top(f"{n}001", "0.2", "0.3") for n in range(1, 8)])
    calls: list[list[str]] = []
    real = bus.latest_many_live  # the tops and their shards' heartbeats in one round trip

    def counting(token_ids):
        ids = list(token_ids)
        calls.append(ids)
        return real(ids)

    monkeypatch.setattr(bus, "latest_many_live", counting)

    seen: list[str] = []
    cursor = ""
    for _ in range(4):
        body = client.get(f"/v1/markets?limit=3{cursor}").json()
        seen += [m["condition_id"] for m in body["data"]]
        assert all(m["tokens"][0]["mid"] == "0.25" for m in body["data"])
        if not body["has_more"]:
            break
        cursor = f"&cursor={body['next_cursor']}"

    assert len(seen) == 7 and len(set(seen)) == 7
    volumes = [Market.objects.get(condition_id=c).volume for c in seen]
    assert volumes == sorted(volumes, reverse=True)
    assert len(calls) == 3 and all(len(ids) == 6 for ids in calls[:2])


def test_markets_cursor_is_bound_to_its_query(client):
    for n in range(1, 4):
        make_market(n, f"Market {n}?", volume=str(n))
    cursor = client.get("/v1/markets?limit=1").json()["next_cursor"]
    response = client.get(f"/v1/markets?limit=1&q=market&cursor={cursor}")
    assert response.status_code == 400 and response.json()["error"] == "INVALID_CURSOR"


def test_market_detail_has_rules_fees_resolution_and_live_quotes(client):
    market = make_market(1, "Will it rain?", status="resolved")
    market.fees_enabled, market.fee_rate, market.fee_exponent = True, Decimal("0.02"), Decimal(2)
    market.save()
    winner = market.tokens.get(index=0)
    MarketResolution.objects.create(
        market=market,
        state="resolved",
        winning_token=winner,
        winning_outcome="Yes",
        payouts={"1001": "1", "1002": "0"},
        source="clob",
    )
    get_bus().publish([top("1001", "0.98", "0.99")])

    body = client.get("/v1/markets/0xc001").json()

    assert body["status"] == "resolved" and body["min_order_size"] == "5"
    assert body["fees"] == {
        "enabled": True,
        "type": "",
        "rate": "0.02",
        "exponent": "2",
        "taker_only": True,
    }
    assert body["resolution"]["winning_token_id"] == "1001"
    assert body["resolution"]["payouts"] == {"1001": "1", "1002": "0"}
    assert body["tokens"][0]["best_ask"] == "0.99"
    assert watchlist.watched() == set()  # a resolved market is not streamed


def test_market_detail_of_an_open_market_starts_streaming_it(client):
    make_market(1, "Will it rain?")
    body = client.get("/v1/markets/0xc001/").json()
    assert body["resolution"] is None
    assert {"1001", "1002"} <= watchlist.watched()


def test_unknown_market_is_404(client):
    response = client.get("/v1/markets/0xnope")
    assert response.status_code == 404 and response.json()["error"] == "NOT_FOUND"


# --- Book -------------------------------------------------------------------------------------
def test_book_is_the_bus_top_and_asks_the_feed_to_stream_it(client):
    make_market(1, "Will it rain?")
    get_bus().publish([top("1001", "0.45", "0.47")])

    response = client.get("/v1/book?token_id=1001")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["bids"] == [{"price": "0.45", "size": "100"}, {"price": "0.1", "size": "5"}]
    assert body["asks"] == [{"price": "0.47", "size": "40"}]
    assert (body["best_bid"], body["best_ask"], body["mid"], body["spread"]) == (
        "0.45",
        "0.47",
        "0.46",
        "0.02",
    )
    assert body["last_trade_price"] == "0.45" and body["tick_size"] == "0.01"
    assert body["timestamp"] == "2026-01-01T00:00:00Z" and body["hash"] == "h" * 40
    assert body["fresh"] is True and body["outcome"] == "Yes"
    assert "1001" in watchlist.watched()


def test_book_without_data_yet_is_503_market_not_ready_but_watched(client):
    make_market(1, "Will it rain?")
    response = client.get("/v1/book?token_id=1002")
    assert response.status_code == 503
    assert response.json()["error"] == "MARKET_NOT_READY"
    assert response["Retry-After"] == "1"
    assert watchlist.watched() == {"1002"}


def test_book_of_an_unknown_token_is_404_and_not_watched(client):
    response = client.get("/v1/book?token_id=999")
    assert response.status_code == 404 and response.json()["error"] == "NOT_FOUND"
    assert watchlist.watched() == set()
    missing = client.get("/v1/book")
    assert missing.status_code == 422 and "token_id" in missing.json()["details"]


# --- Prices history ---------------------------------------------------------------------------
@pytest.fixture
def fakepoly(settings):
    server = FakePolymarket(DEMO_DATA_DIR).start_in_thread()
    settings.POLYMARKET_CLOB_URL = server.clob_url
    try:
        yield server
    finally:
        server.stop()


def demo_token(fakepoly) -> str:
    token_id = next(iter(fakepoly.history))
    market = Market.objects.create(condition_id="0xdemo", question="Demo?")
    Token.objects.create(market=market, token_id=token_id, outcome="Yes", index=0)
    return token_id


def test_prices_history_is_proxied_from_the_clob(client, fakepoly):
    token_id = demo_token(fakepoly)

    response = client.get(f"/v1/prices-history?token_id={token_id}&interval=max&fidelity=1")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["token_id"] == token_id and body["interval"] == "max" and body["fidelity"] == 1
    assert body["history"] and all(
        isinstance(p["t"], int) and isinstance(p["p"], str) for p in body["history"]
    )
    expected = [(t, Decimal(str(p))) for t, p in fakepoly.history[token_id]]
    assert [(p["t"], Decimal(p["p"])) for p in body["history"]] == expected
    assert any(
        path.startswith("/clob/prices-history") and "fidelity=1" in path
        for _, path in fakepoly.requests
    )


def test_prices_history_upstream_failure_is_503_service_unavailable(client, fakepoly):
    token_id = demo_token(fakepoly)
    fakepoly.fail_next(5, status=500, path_prefix="/clob/prices-history")
    response = client.get(f"/v1/prices-history?token_id={token_id}")
    assert response.status_code == 503
    assert response.json()["error"] == "SERVICE_UNAVAILABLE"
    assert response.json()["details"] == {"upstream_status": 500}


def test_prices_history_validates_its_parameters(client):
    make_market(1, "Will it rain?")
    assert client.get("/v1/prices-history?token_id=999").status_code == 404
    for query in ("interval=2y", "fidelity=0", "fidelity=x"):
        response = client.get(f"/v1/prices-history?token_id=1001&{query}")
        assert response.status_code == 422, query


def test_a_dead_feeds_books_are_not_shown_as_fresh(client):
    market = make_market(1, "Will it rain?")
    get_bus().publish([top("1001", "0.45", "0.47")])
    assert client.get("/v1/book?token_id=1001").json()["fresh"] is True
    feed_dead("1001", seconds_ago=60)
    assert client.get("/v1/book?token_id=1001").json()["fresh"] is False
    listed = client.get(f"/v1/markets/{market.condition_id}").json()
    assert [t["fresh"] for t in listed["tokens"]] == [False, False]
