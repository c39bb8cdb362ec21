"""The portfolio page: only the trader's own accounts, the account switcher, tenant badges,
balances and positions at live marks, open orders with cancel and cancel-all (htmx and plain
POST, CSRF enforced, reservations released), newest-first history paging, the equity chart,
and closed accounts read-only."""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal

import pytest
import time_machine
from django.test import Client
from django.utils import timezone

from accounts.models import Account
from accounts.services.wallets import account_open
from tests.factories import UserFactory, personal_account
from tests.trading.conftest import _fresh_engine_state, make_market, publish_book  # noqa: F401
from trading.models import Fill, Order
from trading.services import account_close
from trading.services.orders import order_place
from web.trader import selectors

pytestmark = pytest.mark.django_db

ASKS = [("0.50", "100"), ("0.52", "200")]
BIDS = [("0.40", "100")]
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def ana():
    return UserFactory(email="ana@example.com")


@pytest.fixture
def market():
    market, yes, _no = make_market(question="Will it rain in Lisbon tomorrow?")
    publish_book(yes.token_id, bids=BIDS, asks=ASKS, market=market.condition_id)
    return market, yes


def firm_account(owner, tenant, external_id="ch-001", stage="challenge", balance="5000"):
    return account_open(
        owner=owner,
        tenant=tenant,
        external_id=external_id,
        stage=stage,
        starting_balance=Decimal(balance),
    )


def rest_buy(account, token_id, price="0.30", size="10"):
    """A resting limit BUY below the best ask: reserves price × size."""
    return order_place(
        account_id=account.pk, token_id=token_id, side="BUY", type="limit", price=price, size=size
    ).order


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def text(response) -> str:
    return response.content.decode()


# --- Access ---------------------------------------------------------------------------------
def test_anonymous_visitors_are_sent_to_sign_in(client):
    response = client.get("/portfolio/")

    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=/portfolio/")


def test_the_portfolio_lists_only_the_traders_own_accounts_in_the_switcher(ana, tenant):
    mine = personal_account(ana)
    firm = firm_account(ana, tenant)
    someone = personal_account(UserFactory(email="bo@example.com"))

    response = signed_in(ana).get("/portfolio/")

    assert response.status_code == 200
    page = text(response)
    switcher = re.search(r'<select id="account-switcher".*?</select>', page, re.S).group(0)
    assert 'data-testid="account-switcher"' in switcher
    assert f'value="{mine.pk}" selected' in switcher  # personal first
    assert f'value="{firm.pk}"' in switcher and "Acme Prop · ch-001 · Challenge" in switcher
    assert str(someone.pk) not in page
    assert "no-store" in response["Cache-Control"]


def test_another_traders_account_is_a_404_like_a_made_up_one(ana):
    personal_account(ana)
    other = personal_account(UserFactory(email="bo@example.com"))
    client = signed_in(ana)

    assert client.get(f"/portfolio/?account={other.pk}").status_code == 404
    assert client.get("/portfolio/?account=not-a-uuid").status_code == 404
    assert client.get(f"/portfolio/history/?account={other.pk}").status_code == 404


def test_a_tenant_account_shows_its_firm_and_stage(ana, tenant):
    personal_account(ana)
    firm = firm_account(ana, tenant, stage="funded")

    page = text(signed_in(ana).get(f"/portfolio/?account={firm.pk}"))

    assert '<span data-testid="managed-by">Managed by Acme Prop</span>' in page
    assert re.search(r'data-testid="stage-badge">Funded<', page)


def test_a_trader_without_accounts_gets_a_friendly_page(ana):
    response = signed_in(ana).get("/portfolio/")

    assert response.status_code == 200
    assert 'data-testid="portfolio-empty"' in text(response)


def test_the_partner_landing_path_ends_on_the_portfolio_keeping_the_account(ana, tenant):
    firm = firm_account(ana, tenant)
    client = signed_in(ana)

    response = client.get(f"/app/?account={firm.pk}")

    assert response.status_code == 302
    assert response["Location"] == f"/portfolio/?account={firm.pk}"
    assert "Managed by Acme Prop" in text(client.get(response["Location"]))


# --- Balances, positions, chart -------------------------------------------------------------
def test_balances_and_positions_show_marks_and_unrealized_pnl(ana, market):
    market_row, yes = market
    account = personal_account(ana, "1000")
    # Buys 10 shares at the 0.50 ask (a market with no fees): cash 995.
    order_place(
        account_id=account.pk, token_id=yes.token_id, side="BUY", type="limit", price="0.50",
        size="10",
    )  # fmt: skip
    # The book moves up: mid (0.58 + 0.62) / 2 = 0.60; the 10 shares are worth 6.00.
    publish_book(
        yes.token_id, bids=[("0.58", "50")], asks=[("0.62", "50")], market=market_row.condition_id
    )

    page = text(signed_in(ana).get("/portfolio/"))

    assert re.search(r'data-testid="stat-balance">\$995\.00<', page)
    assert re.search(r'data-testid="stat-equity">\$1,001\.00<', page)
    assert re.search(r'data-testid="stat-pnl">\+\$1\.00<', page)
    row = re.search(r'<tr data-testid="position-row".*?</tr>', page, re.S).group(0)
    assert f'data-token-id="{yes.token_id}"' in row
    assert f'href="/markets/{market_row.condition_id}/"' in row
    assert "Will it rain in Lisbon tomorrow?" in row
    assert re.search(r'data-testid="position-mark">60¢<', row)
    assert re.search(r'data-testid="position-unrealized">\+\$1\.00<', row)


def test_the_equity_chart_carries_decimal_strings_ending_at_current_equity(ana, market):
    _market, yes = market
    with time_machine.travel(timezone.now() - dt.timedelta(hours=1)):
        account = personal_account(ana, "1000")
    order_place(
        account_id=account.pk, token_id=yes.token_id, side="BUY", type="limit", price="0.50",
        size="10",
    )  # fmt: skip

    page = text(signed_in(ana).get("/portfolio/"))

    data = json.loads(
        re.search(r'<script id="equity-data" type="application/json">(.*?)</script>', page).group(1)
    )
    # Opening at 1000; after the fill 995 cash + 10 shares at the 0.45 mid = 999.50.
    assert data["interval"] == 60
    assert data["v"][0] == "1000.000000"
    assert data["v"][-1] == "999.500000"
    assert all(isinstance(v, str) for v in data["v"]) and len(data["t"]) == len(data["v"])
    assert data["t"] == sorted(data["t"])
    assert 'data-testid="equity-chart"' in page


# --- Open orders: cancel and cancel-all -----------------------------------------------------
def test_cancel_from_the_portfolio_releases_the_reservation(ana, market):
    _market, yes = market
    account = personal_account(ana, "1000")
    order = rest_buy(account, yes.token_id, price="0.30", size="10")
    account.refresh_from_db()
    assert account.reserved_cash == Decimal("3")
    client = signed_in(ana)
    page = text(client.get("/portfolio/"))
    assert f'data-order-id="{order.pk}"' in page and 'data-testid="cancel-order"' in page

    response = client.post(f"/portfolio/orders/{order.pk}/cancel/", **HTMX)

    assert response.status_code == 200
    body = text(response)
    assert "Order canceled." in body
    assert 'data-testid="open-orders-empty"' in body
    assert 'id="account-summary"' in body and 'hx-swap-oob="true"' in body
    assert re.search(r'data-testid="stat-available">\$1,000\.00<', body)
    order.refresh_from_db()
    account.refresh_from_db()
    assert order.status == Order.Status.CANCELED and order.reason == "USER"
    assert account.reserved_cash == Decimal("0") and account.available_cash == Decimal("1000")


def test_cancel_all_without_javascript_redirects_back_with_a_message(ana, market):
    _market, yes = market
    account = personal_account(ana, "1000")
    rest_buy(account, yes.token_id, price="0.30", size="10")
    rest_buy(account, yes.token_id, price="0.20", size="20")
    client = signed_in(ana)

    response = client.post("/portfolio/orders/cancel-all/", {"account": str(account.pk)})

    assert response.status_code == 302
    assert response["Location"] == f"/portfolio/?account={account.pk}#open-orders"
    assert "2 open orders canceled." in text(client.get(response["Location"]))
    account.refresh_from_db()
    assert account.reserved_cash == Decimal("0") and account.cash == Decimal("1000")
    assert not Order.objects.filter(account=account, status=Order.Status.LIVE).exists()


def test_cancelling_a_finished_order_says_so_in_a_sentence(ana, market):
    _market, yes = market
    account = personal_account(ana, "1000")
    filled = order_place(
        account_id=account.pk, token_id=yes.token_id, side="BUY", type="limit", price="0.50",
        size="10",
    ).order  # fmt: skip
    assert filled.status == Order.Status.MATCHED

    response = signed_in(ana).post(f"/portfolio/orders/{filled.pk}/cancel/", **HTMX)

    assert response.status_code == 200
    assert "This order has already finished" in text(response)
    assert "ILLEGAL_TRANSITION" not in text(response)


def test_another_traders_order_cannot_be_cancelled(ana, market):
    _market, yes = market
    bo = UserFactory(email="bo@example.com")
    theirs = rest_buy(personal_account(bo), yes.token_id)
    personal_account(ana)
    client = signed_in(ana)

    assert client.post(f"/portfolio/orders/{theirs.pk}/cancel/").status_code == 404
    other_account = str(theirs.account_id)
    assert (
        client.post("/portfolio/orders/cancel-all/", {"account": other_account}).status_code == 404
    )
    theirs.refresh_from_db()
    assert theirs.status == Order.Status.LIVE


def test_cancel_requires_the_csrf_token(ana, market):
    _market, yes = market
    account = personal_account(ana, "1000")
    order = rest_buy(account, yes.token_id)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(ana)

    refused = browser.post(f"/portfolio/orders/{order.pk}/cancel/", **HTMX)
    refused_all = browser.post("/portfolio/orders/cancel-all/", {"account": str(account.pk)})

    assert refused.status_code == refused_all.status_code == 403
    order.refresh_from_db()
    assert order.status == Order.Status.LIVE
    # With the token htmx sends from the page's hx-headers, the same request goes through.
    page = text(browser.get("/portfolio/"))
    token = re.search(r'hx-headers=\'\{"X-CSRFToken": "([^"]+)"\}\'', page).group(1)
    accepted = browser.post(f"/portfolio/orders/{order.pk}/cancel/", HTTP_X_CSRFTOKEN=token, **HTMX)
    assert accepted.status_code == 200
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELED


def test_a_closed_account_is_read_only(ana, tenant, market):
    _market, yes = market
    personal_account(ana)
    firm = firm_account(ana, tenant)
    rest_buy(firm, yes.token_id)
    account_close(account=firm)
    client = signed_in(ana)

    page = text(client.get(f"/portfolio/?account={firm.pk}"))
    response = client.post("/portfolio/orders/cancel-all/", {"account": str(firm.pk)}, **HTMX)

    assert 'data-testid="read-only-notice"' in page and 'data-testid="closed-badge"' in page
    assert 'data-testid="cancel-order"' not in page and 'data-testid="cancel-all"' not in page
    assert "This account is closed, so its orders cannot be changed." in text(response)
    assert 'data-testid="cancel-all"' not in text(response)
    assert Account.objects.get(pk=firm.pk).status == Account.Status.CLOSED


# --- History --------------------------------------------------------------------------------
def test_history_pages_newest_first_with_keyset_cursors(ana, market, monkeypatch):
    _market, yes = market
    account = personal_account(ana, "1000")
    for _ in range(5):  # five taker fills at the 0.50 ask, seq 1..5
        order_place(
            account_id=account.pk, token_id=yes.token_id, side="BUY", type="limit",
            price="0.50", size="5",
        )  # fmt: skip
    monkeypatch.setattr(selectors, "HISTORY_PAGE_SIZE", 2)
    client = signed_in(ana)

    first = text(client.get("/portfolio/"))
    seqs = [
        int(s)
        for s in re.findall(r'data-testid="trade-row" data-kind="fill" data-seq="(\d+)"', first)
    ]
    assert seqs == [5, 4]
    more = re.search(r'hx-get="(/portfolio/history/\?[^"]+)"', first).group(1).replace("&amp;", "&")
    second = text(client.get(more, **HTMX))
    assert [int(s) for s in re.findall(r'data-seq="(\d+)"', second)] == [3, 2]
    assert "<html" not in second  # a fragment: rows and the next button only
    last_link = re.search(r'hx-get="(/portfolio/history/\?[^"]+)"', second).group(1)
    third = text(client.get(last_link.replace("&amp;", "&"), **HTMX))
    assert [int(s) for s in re.findall(r'data-seq="(\d+)"', third)] == [1]
    assert "trades-load-older" not in third
    # Without JavaScript the same cursor opens the full page at that point.
    plain = re.search(r'href="(/portfolio/\?account=[^"]+before=[^"#]+)', first).group(1)
    page = text(client.get(plain.replace("&amp;", "&")))
    assert [int(s) for s in re.findall(r'data-seq="(\d+)"', page)] == [3, 2]
    assert Fill.objects.filter(account=account).count() == 5


def test_a_cursor_from_another_account_is_refused_plainly(ana, tenant, market, monkeypatch):
    _market, yes = market
    mine = personal_account(ana, "1000")
    firm = firm_account(ana, tenant)
    for _ in range(2):
        order_place(
            account_id=mine.pk, token_id=yes.token_id, side="BUY", type="limit", price="0.50",
            size="5",
        )  # fmt: skip
    monkeypatch.setattr(selectors, "HISTORY_PAGE_SIZE", 1)
    client = signed_in(ana)
    first = text(client.get(f"/portfolio/?account={mine.pk}"))
    cursor = re.search(r"before=([^\"&#]+)", first).group(1)

    response = client.get(f"/portfolio/history/?account={firm.pk}&before={cursor}", **HTMX)

    assert response.status_code == 400
    assert "no longer valid" in text(response)
