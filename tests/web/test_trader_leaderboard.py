"""The leaderboard: personal accounts ranked by this season's (calendar month, UTC) P&L, with
hand-computed figures; tenant accounts never appear nor count; ties share a rank; the
viewer's own row is highlighted even outside the top rows; one query."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest
import time_machine
from django.db import transaction
from django.test import Client

from accounts.services.wallets import account_lock, account_open, equity_snapshot_record
from tests.factories import TenantFactory, UserFactory
from tests.trading.conftest import (  # noqa: F401
    _fresh_engine_state,
    feed_alive,
    make_market,
    publish_book,
)
from trading.services.orders import order_place
from web.trader import selectors

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2030, 2, 20, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _fresh_ranking_cache():
    selectors.leaderboard_cache_clear()
    yield
    selectors.leaderboard_cache_clear()


def utc(month: int, day: int, hour: int = 12) -> dt.datetime:
    return dt.datetime(2030, month, day, hour, 0, tzinfo=dt.UTC)


def open_personal(email: str, when: dt.datetime, balance: str = "1000"):
    with time_machine.travel(when, tick=False):
        return account_open(
            owner=UserFactory(email=email),
            tenant=None,
            external_id=None,
            stage=None,
            starting_balance=Decimal(balance),
        )


def measure(account, positions_value: str, when: dt.datetime) -> None:
    """An equity measurement at `when` (what the minute snapshot task records)."""
    with transaction.atomic():
        locked = account_lock(account_id=account.pk)
        equity_snapshot_record(account=locked, positions_value=Decimal(positions_value), at=when)


@pytest.fixture
def season():
    """Four personal accounts and one firm account with hand-computed season P&L."""
    # Alice: opened in January; 1100 at the season start (Jan 31), 1250 now: +150 (+13.64%).
    alice = open_personal("alice@example.com", utc(1, 10))
    measure(alice, "100", utc(1, 31))
    measure(alice, "250", utc(2, 5))
    # Bo: opened during the season with 1000; buys 100 Yes at 0.50 (cash 950), now marked at
    # 0.20: 950 + 20 = 970, so -30 (-3.00%).
    bo = open_personal("bo@example.com", utc(2, 3))
    with time_machine.travel(utc(2, 10), tick=False):
        feed_alive()
        _market, yes, _no = make_market()
        publish_book(yes.token_id, bids=[("0.40", "500")], asks=[("0.50", "500")])
        order_place(
            account_id=bo.pk, token_id=yes.token_id, side="BUY", type="limit", price="0.50",
            size="100",
        )  # fmt: skip
    measure(bo, "20", utc(2, 15))
    # Cy and Dee: opened in January, never traded: 0 each, a tie; Cy is the older account.
    cy = open_personal("cy@example.com", utc(1, 5))
    dee = open_personal("dee@example.com", utc(1, 6))
    # A firm's account that would rank first by far (+5000): never shown, never counted.
    with time_machine.travel(utc(2, 2), tick=False):
        firm_account = account_open(
            owner=UserFactory(email="firm-trader@example.com"),
            tenant=TenantFactory(slug="acme", name="Acme Prop"),
            external_id="ch-1",
            stage="challenge",
            starting_balance=Decimal("1000"),
        )
    measure(firm_account, "5000", utc(2, 12))
    return {"alice": alice, "bo": bo, "cy": cy, "dee": dee, "firm": firm_account}


def test_season_pnl_is_ranked_with_hand_computed_figures(season, django_assert_num_queries):
    with django_assert_num_queries(1):
        board = selectors.leaderboard(now=NOW)

    got = [(r.rank, r.account_id, r.baseline, r.equity, r.pnl, r.return_pct) for r in board.rows]
    d = Decimal
    assert got == [
        (1, season["alice"].pk, d("1100"), d("1250"), d("150"), d("13.6364")),
        (2, season["cy"].pk, d("1000"), d("1000"), d("0"), d("0")),
        (2, season["dee"].pk, d("1000"), d("1000"), d("0"), d("0")),
        (4, season["bo"].pk, d("1000"), d("970"), d("-30"), d("-3")),
    ]
    assert board.total == 4
    assert board.season_start == dt.datetime(2030, 2, 1, tzinfo=dt.UTC)
    assert board.season_end == dt.datetime(2030, 3, 1, tzinfo=dt.UTC)


def test_a_new_season_starts_everyone_from_their_equity_at_its_start(season):
    board = selectors.leaderboard(now=dt.datetime(2030, 3, 2, tzinfo=dt.UTC))

    pnl = {r.account_id: r.pnl for r in board.rows}
    assert set(pnl.values()) == {Decimal("0")}  # nobody traded in March yet
    assert season["firm"].pk not in pnl


def test_the_page_never_shows_tenant_accounts_and_highlights_the_viewer(season):
    client = Client()

    with time_machine.travel(NOW, tick=False):
        client.force_login(season["bo"].owner)  # a session of "now", not of years before
        page = client.get("/leaderboard/").content.decode()

    rows = re.findall(r'<tr data-testid="leaderboard-row" data-rank="(\d+)"', page)
    assert rows == ["1", "2", "2", "4"]
    assert "+$5,000.00" not in page and "firm-trader" not in page
    assert "@example.com" not in page.split("</header>", 1)[1]  # no email on the board itself
    mine = re.findall(r'<tr data-testid="leaderboard-row" data-rank="(\d+)" class="is-me"', page)
    assert mine == ["4"]
    assert 'data-me="true" aria-current="true"' in page
    assert re.search(r'data-testid="leaderboard-my-rank">You are <strong>#4</strong> of 4', page)
    assert "+$150.00" in page and "−$30.00" in page and "+13.64%" in page
    assert "Season P&amp;L = equity now − equity at the start of the season." in page


def test_the_viewer_outside_the_top_rows_is_still_shown_after_a_gap(season, monkeypatch):
    monkeypatch.setattr(selectors, "LEADERBOARD_SHOWN", 2)
    client = Client()

    with time_machine.travel(NOW, tick=False):
        client.force_login(season["bo"].owner)  # a session of "now", not of years before
        page = client.get("/leaderboard/").content.decode()

    assert re.findall(r'data-testid="leaderboard-row" data-rank="(\d+)"', page) == ["1", "2", "4"]
    assert 'class="gap-row"' in page


def test_the_page_is_public_and_anonymous_visitors_have_no_highlight(season, client):
    with time_machine.travel(NOW, tick=False):
        response = client.get("/leaderboard/")

    assert response.status_code == 200
    assert 'data-me="true"' not in response.content.decode()


def test_seasons_are_calendar_months_in_utc():
    assert selectors.season_bounds(dt.datetime(2030, 12, 31, 23, 59, tzinfo=dt.UTC)) == (
        dt.datetime(2030, 12, 1, tzinfo=dt.UTC),
        dt.datetime(2031, 1, 1, tzinfo=dt.UTC),
    )
    # 00:30 on March 1st in UTC+2 is still February in UTC.
    plus_two = dt.timezone(dt.timedelta(hours=2))
    start, _ = selectors.season_bounds(dt.datetime(2030, 3, 1, 0, 30, tzinfo=plus_two))
    assert start == dt.datetime(2030, 2, 1, tzinfo=dt.UTC)


def test_live_pages_reuse_the_ranking_for_a_short_while(season, django_assert_num_queries):
    with time_machine.travel(NOW, tick=False):
        with django_assert_num_queries(1):
            selectors.leaderboard()
        with django_assert_num_queries(0):
            again = selectors.leaderboard(viewer_id=season["bo"].owner_id)
    assert again.me is not None and again.me.rank == 4
