"""Market list and market page, server side: filters, live quotes from the bus, badges, the
book fragment's change detection and stale indicator, bounded queries."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from tests.factories import UserFactory, personal_account
from tests.trading.conftest import feed_dead, make_market, publish_book

pytestmark = pytest.mark.django_db


def _html(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def test_list_shows_markets_with_live_quotes_and_badges(client):
    open_m, yes, _ = make_market(question="Will the rain stop?", category="Weather", volume=900)
    make_market(question="Closed question?", status="closed", volume=800)
    publish_book(yes.token_id, bids=[("0.41", "100")], asks=[("0.43", "50")])
    html = _html(client.get(reverse("web:markets")))
    assert "Will the rain stop?" in html
    assert "Closed question?" not in html  # default filter: open markets
    assert "42¢" in html and "41¢ / 43¢" in html  # mid, bid / ask from the bus
    assert 'data-testid="status-badge">Open<' in html
    closed = _html(client.get(reverse("web:markets"), {"status": "closed"}))
    assert "Closed question?" in closed and "Closed · result pending" in closed
    assert open_m.condition_id in html


def test_list_search_category_and_sort(client):
    soon = timezone.now() + dt.timedelta(days=1)
    later = timezone.now() + dt.timedelta(days=30)
    make_market(question="Alpha coin above 1?", category="Crypto", volume=10, end_date=later)
    make_market(question="Beta coin above 2?", category="Crypto", volume=5, end_date=soon)
    make_market(question="Gamma election?", category="Politics", volume=50, end_date=later)
    html = _html(client.get(reverse("web:markets"), {"q": "coin"}))
    assert "Alpha coin" in html and "Beta coin" in html and "Gamma election" not in html
    html = _html(client.get(reverse("web:markets"), {"category": "politics"}))
    assert "Gamma election" in html and "Alpha coin" not in html
    by_volume = _html(client.get(reverse("web:markets")))
    assert (
        by_volume.index("Gamma election")
        < by_volume.index("Alpha coin")
        < by_volume.index("Beta coin")
    )
    ending = _html(client.get(reverse("web:markets"), {"sort": "ending_soon"}))
    assert ending.index("Beta coin") < ending.index("Alpha coin")


def test_list_htmx_returns_only_the_results_fragment(client):
    make_market(question="Fragment market?")
    response = client.get(reverse("web:markets"), {"q": "Fragment"}, HTTP_HX_REQUEST="true")
    html = _html(response)
    assert html.lstrip().startswith('<section id="market-results"')
    assert "<html" not in html and "Fragment market?" in html


def test_list_pages_with_a_keyset_cursor_and_survives_a_bad_one(client):
    for n in range(45):
        make_market(question=f"Paged market {n:02d}?", volume=1000 - n)
    first = _html(client.get(reverse("web:markets")))
    assert first.count('data-testid="market-row"') == 24
    cursor = re.search(r'cursor=([^"&]+)" data-testid="page-next"', first)
    assert cursor is not None
    second = client.get(reverse("web:markets") + "?status=open&sort=volume&cursor=" + cursor[1])
    second_html = _html(second)
    assert second_html.count('data-testid="market-row"') == 21
    assert "Paged market 44?" in second_html
    bad = _html(client.get(reverse("web:markets"), {"cursor": "garbage"}))
    assert bad.count('data-testid="market-row"') == 24


def test_list_queries_are_bounded_whatever_the_page_size(client):
    for n in range(60):
        make_market(question=f"Bounded {n}?", volume=n)
    client.get(reverse("web:markets"))  # warm the category cache
    with CaptureQueriesContext(connection) as ctx:
        _html(client.get(reverse("web:markets")))
    assert len(ctx) <= 3, [q["sql"] for q in ctx]


def test_market_page_anonymous_sees_book_and_sign_in(client):
    market, yes, _no = make_market(question="Anonymous view?")
    publish_book(
        yes.token_id,
        market=market.condition_id,
        bids=[("0.40", "120"), ("0.39", "10")],
        asks=[("0.44", "30")],
    )
    html = _html(client.get(reverse("web:market", args=[market.condition_id])))
    assert 'data-testid="market-question">Anonymous view?<' in html
    assert html.count('data-testid="bid-row"') == 2 and html.count('data-testid="ask-row"') == 1
    assert 'data-testid="book-state-0" title="Live from the feed">Live' in html
    assert 'data-testid="book-state-1">No book yet' in html
    assert "Mid 42¢ · spread 4¢" in html
    assert 'data-testid="signin-to-trade"' in html and "ticket-form" not in html
    assert "csrfmiddlewaretoken" not in html  # anonymous pages carry no per-request token
    assert "hx-swap-oob" not in html  # out-of-band pieces only in the polled fragment


def test_market_page_unknown_is_404(client):
    assert client.get(reverse("web:market", args=["0xnope"])).status_code == 404
    assert client.get(reverse("web:market-book", args=["0xnope"])).status_code == 404


def test_book_fragment_answers_204_until_the_book_changes(client):
    market, yes, _ = make_market()
    publish_book(yes.token_id, bids=[("0.40", "100")], asks=[("0.45", "10")])
    url = reverse("web:market-book", args=[market.condition_id])
    first = client.get(url)
    html = _html(first)
    version = re.search(r'data-version="([0-9a-f]+)"', html)[1]
    same = client.get(url, {"v": version})
    assert same.status_code == 204 and same.content == b""
    assert same["Cache-Control"] == "no-store"
    publish_book(yes.token_id, bids=[("0.40", "100")], asks=[("0.45", "10")])  # republished
    assert client.get(url, {"v": version}).status_code == 204
    publish_book(yes.token_id, bids=[("0.41", "77")], asks=[("0.45", "10")])
    changed = client.get(url, {"v": version})
    changed_html = _html(changed)
    assert "41¢" in changed_html and ">77<" in changed_html
    assert version not in changed_html
    # The headline prices ride along out of band: the new mid (0.41 + 0.45) / 2.
    summary = changed_html[changed_html.index('id="outcome-summary"') :]
    assert 'hx-swap-oob="true"' in summary and ">43¢<" in summary


def test_book_shows_stale_when_the_feed_is_dead(client):
    market, yes, _ = make_market()
    publish_book(yes.token_id, bids=[("0.40", "100")], asks=[("0.45", "10")])
    url = reverse("web:market-book", args=[market.condition_id])
    live_html = _html(client.get(url))
    assert ">Live<" in live_html
    version = re.search(r'data-version="([0-9a-f]+)"', live_html)[1]
    feed_dead(yes.token_id)
    stale = client.get(url, {"v": version})
    assert stale.status_code == 200  # the digest covers liveness
    assert ">Stale<" in stale.content.decode()


def test_book_fragment_queries(client):
    market, yes, _ = make_market()
    publish_book(yes.token_id, bids=[("0.40", "100")], asks=[("0.45", "10")])
    url = reverse("web:market-book", args=[market.condition_id])
    with CaptureQueriesContext(connection) as ctx:
        client.get(url)
    assert len(ctx) == 2


def test_market_page_signed_in_shows_the_ticket_with_accounts(client, tenant):
    from tests.trading.conftest import open_account

    user = UserFactory()
    personal_account(user, "250")
    firm = open_account("5000", tenant=tenant)
    firm.owner = user
    firm.save(update_fields=["owner"])
    market, _yes, _ = make_market()
    client.force_login(user)
    html = _html(client.get(reverse("web:market", args=[market.condition_id])))
    assert 'data-testid="ticket-form"' in html
    assert "Personal — $250.00 available" in html
    assert f"Managed by {tenant.name}" in html
    tenant.enabled = False
    tenant.save(update_fields=["enabled"])
    html = _html(client.get(reverse("web:market", args=[market.condition_id])))
    assert f"Managed by {tenant.name} · Challenge" in html and "trading paused by the firm" in html
    assert re.search(r'name="client_order_id" value="web-[0-9a-f]{32}"', html)


def test_market_page_badges_for_resolution_states(client):
    for status, label in (
        ("resolved", "Resolved"),
        ("void", "Void · 50/50"),
        ("ambiguous", "Pending review"),
    ):
        market, _, _ = make_market(status=status)
        html = _html(client.get(reverse("web:market", args=[market.condition_id])))
        assert label in html


def test_history_endpoint_proxies_and_caches(client, monkeypatch):
    from marketdata.clients import ClobClient

    market, yes, _ = make_market()
    calls = []

    def fake_history(self, token_id, **kwargs):
        calls.append((token_id, kwargs))
        return [(1_700_000_000, Decimal("0.41")), (1_700_000_060, Decimal("0.43"))]

    monkeypatch.setattr(ClobClient, "prices_history", fake_history)
    url = reverse("web:market-history", args=[market.condition_id])
    body = client.get(url, {"interval": "1w"}).json()
    assert body == {
        "token_id": yes.token_id,
        "outcome": "Yes",
        "interval": "1w",
        "t": [1_700_000_000, 1_700_000_060],
        "p": [0.41, 0.43],
    }
    client.get(url, {"interval": "1w"})
    assert len(calls) == 1
    assert calls[0][1]["interval"] == "1w"


def test_history_endpoint_upstream_failure_is_503(client, monkeypatch):
    from marketdata.clients import ClobClient, PolymarketError

    market, _, _ = make_market()

    calls = []

    def broken(self, token_id, **kwargs):
        calls.append(token_id)
        raise PolymarketError(502, "down")

    monkeypatch.setattr(ClobClient, "prices_history", broken)
    url = reverse("web:market-history", args=[market.condition_id])
    for _ in range(2):
        response = client.get(url)
        assert response.status_code == 503
        assert response.json()["error"] == "SERVICE_UNAVAILABLE"
    assert len(calls) == 1  # the failure is remembered briefly: a dead upstream costs one call


def test_markets_home_redirect_for_visitors(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"] == reverse("web:markets")


def test_recent_market_trades_from_the_feed(client):
    from marketdata.bus import TradePrint, get_bus, now_ms

    market, yes, no = make_market()
    publish_book(yes.token_id, bids=[("0.40", "100")], asks=[("0.45", "10")])
    url = reverse("web:market", args=[market.condition_id])
    assert "No trades seen since the feed started" in _html(client.get(url))
    get_bus().record_trades(
        [
            TradePrint(yes.token_id, "0.45", "10", "BUY", 1_786_604_000_000, now_ms()),
            TradePrint(no.token_id, "0.6", "3.5", "SELL", 1_786_604_060_000, now_ms()),
        ]
    )
    html = _html(client.get(url))
    rows = re.findall(r'<tr data-testid="print-row">(.*?)</tr>', html)
    assert len(rows) == 2
    assert "No" in rows[0] and "60¢" in rows[0] and "3.5" in rows[0]  # newest first
    assert "Yes" in rows[1] and "45¢" in rows[1] and "Buy" in rows[1]
    fragment = reverse("web:market-book", args=[market.condition_id])
    version = re.search(r'data-version="([0-9a-f]+)"', html)[1]
    assert client.get(fragment, {"v": version}).status_code == 204
    get_bus().record_trades(
        [TradePrint(yes.token_id, "0.46", "1", "BUY", 1_786_604_120_000, now_ms())]
    )
    assert client.get(fragment, {"v": version}).status_code == 200  # a new print is a change


def test_opening_an_open_market_asks_the_feed_to_stream_it(client):
    from marketdata.watchlist import watched

    market, yes, no = make_market()
    closed, _, _ = make_market(status="closed")
    client.get(reverse("web:market", args=[market.condition_id]))
    client.get(reverse("web:market", args=[closed.condition_id]))
    assert watched() == {yes.token_id, no.token_id}


def test_signed_in_fragment_carries_the_ticket_quotes_out_of_band(client):
    market, yes, _ = make_market()
    publish_book(yes.token_id, bids=[("0.40", "100")], asks=[("0.45", "10")])
    url = reverse("web:market-book", args=[market.condition_id])
    assert 'id="ticket-quote-0"' not in _html(client.get(url))  # visitors have no ticket
    user = UserFactory()
    personal_account(user)
    client.force_login(user)
    html = _html(client.get(url))
    quote = html[html.index('id="ticket-quote-0"') :]
    assert 'hx-swap-oob="true"' in quote[:200] and "45¢" in quote[:300] and "40¢" in quote[:300]


def test_ticket_on_a_closed_market_and_without_an_account(client):
    closed, _, _ = make_market(status="closed", accepting_orders=False)
    user = UserFactory()
    personal_account(user)
    client.force_login(user)
    html = _html(client.get(reverse("web:market", args=[closed.condition_id])))
    assert 'data-testid="ticket-closed">This market is not taking orders.' in html
    assert "ticket-form" not in html
    open_market, _, _ = make_market()
    client.force_login(UserFactory())  # no account at all
    html = _html(client.get(reverse("web:market", args=[open_market.condition_id])))
    assert 'data-testid="ticket-no-account"' in html and "ticket-form" not in html
