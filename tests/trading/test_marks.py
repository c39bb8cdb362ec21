"""Marks in the account envelope (docs/partner-api.md): the live midpoint, the last trade when
the spread is wider than 0.10, the last known price (flagged, with its age) when the book is
not live, cost when no book ever priced the position. Books come from the real price bus."""

from __future__ import annotations

from decimal import Decimal

import pytest

from accounts.models import Position
from marketdata.bus import BookTop, get_bus, now_ms
from partners.services import partner_account_open, trader_register
from tests.factories import TenantFactory
from tests.trading.conftest import feed_dead
from trading.selectors import account_state

pytestmark = pytest.mark.django_db


def book(
    token: str,
    bid: str | None,
    ask: str | None,
    *,
    last: str | None = "0.40",
    fresh: bool = True,
    ts: int = 1_790_000_000_000,
) -> BookTop:
    return BookTop(
        token_id=token, market="0xm", best_bid=bid, best_ask=ask, mid=None, spread=None,
        last_trade_price=last, last_trade_side="BUY", tick_size="0.01", timestamp_ms=ts,
        hash="h", fresh=fresh, published_at=now_ms(),
        bids=[[bid, "100"]] if bid else [], asks=[[ask, "100"]] if ask else [],
    )  # fmt: skip


@pytest.fixture
def account():
    tenant = TenantFactory(slug="acme")
    mapping, _ = trader_register(tenant=tenant, external_id="t", email="t@example.com")
    account, _ = partner_account_open(
        tenant=tenant, user_id=mapping.user_id, external_id="a", stage="demo",
        starting_balance=Decimal("1000"),
    )  # fmt: skip
    Position.objects.create(
        account=account, epoch=0, token_id="tok", market_id="0xm", size=Decimal("100"),
        avg_price=Decimal("0.30"), cost_basis=Decimal("30"),
    )  # fmt: skip
    return account


def mark_of(account):
    state = account_state(account_id=account.pk, tenant=account.tenant)
    [position] = state["positions"]
    return position.mark, state


def test_tight_book_marks_at_the_midpoint(account):
    get_bus().publish([book("tok", "0.50", "0.54")])
    mark, state = mark_of(account)
    assert (mark.price, mark.source) == (Decimal("0.52"), "mid")
    assert state["positions_value"] == Decimal("52.00")
    assert state["equity"] == Decimal("1052.00")  # 1000 cash (no trade ledgered) + 100 × 0.52
    assert state["prices_as_of"] is not None and mark.as_of.year == 2026


def test_wide_spread_marks_at_the_last_trade(account):
    get_bus().publish([book("tok", "0.30", "0.45", last="0.41")])  # spread 0.15 > 0.10
    mark, _ = mark_of(account)
    assert (mark.price, mark.source) == (Decimal("0.41"), "last_trade")


def test_exactly_ten_cents_is_still_the_midpoint(account):
    get_bus().publish([book("tok", "0.40", "0.50")])
    mark, _ = mark_of(account)
    assert (mark.price, mark.source) == (Decimal("0.45"), "mid")


def test_stale_book_gives_its_last_price_flagged_with_its_age(account):
    get_bus().publish([book("tok", "0.50", "0.54", fresh=False, ts=1_790_000_123_000)])
    mark, _ = mark_of(account)
    assert (mark.price, mark.source) == (Decimal("0.52"), "last_known")
    assert int(mark.as_of.timestamp() * 1000) == 1_790_000_123_000


def test_a_dead_feed_is_last_known_too(account):
    get_bus().publish([book("tok", "0.50", "0.54")])
    feed_dead("tok", seconds_ago=60)
    mark, _ = mark_of(account)
    assert mark.source == "last_known"


def test_one_sided_book_without_trades_falls_back_to_cost_never_zero(account):
    get_bus().publish([book("tok", None, "0.54", last=None)])
    mark, state = mark_of(account)
    assert (mark.price, mark.source) == (Decimal("0.30"), "cost")
    assert state["positions_value"] == Decimal("30.00")


def test_no_book_at_all_is_cost(account):
    mark, _ = mark_of(account)
    assert (mark.price, mark.source) == (Decimal("0.30"), "cost")
