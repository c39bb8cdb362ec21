"""Equity is measured each minute for accounts with positions, so the high-water mark and
max drawdown follow prices between fills (docs/engine-rules.md §6)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from accounts.models import Account, EquitySnapshot, Position
from marketdata.bus import BookTop, get_bus, now_ms
from partners.services import partner_account_open, trader_register
from tests.factories import TenantFactory
from trading.services import account_close, equity_snapshots_take
from trading.tasks import equity_snapshots

pytestmark = pytest.mark.django_db


def quote(bid: str, ask: str) -> BookTop:
    return BookTop(
        token_id="tok", market="0xm", best_bid=bid, best_ask=ask, mid=None, spread=None,
        last_trade_price=None, last_trade_side=None, tick_size="0.01", timestamp_ms=now_ms(),
        hash="h", fresh=True, bids=[[bid, "100"]], asks=[[ask, "100"]], published_at=now_ms(),
    )  # fmt: skip


def open_account(external_id: str, *, with_position: bool) -> Account:
    tenant = TenantFactory(slug="acme")
    mapping, _ = trader_register(
        tenant=tenant, external_id=external_id, email=f"{external_id}@x.io"
    )
    account, _ = partner_account_open(
        tenant=tenant, user_id=mapping.user_id, external_id=external_id, stage="demo",
        starting_balance=Decimal("1000"),
    )  # fmt: skip
    if with_position:
        Position.objects.create(
            account=account, epoch=0, token_id="tok", market_id="0xm", size=Decimal("100"),
            avg_price=Decimal("0.50"), cost_basis=Decimal("50"),
        )  # fmt: skip
    return account


def test_hwm_and_drawdown_follow_prices_between_fills():
    holder = open_account("holder", with_position=True)
    flat = open_account("flat", with_position=False)
    snapshots_before = EquitySnapshot.objects.filter(account=flat).count()
    bus = get_bus()
    for bid, ask in (("0.70", "0.72"), ("0.40", "0.42"), ("0.55", "0.57")):
        bus.publish([quote(bid, ask)])
        assert equity_snapshots_take() == 1  # only the account holding a position
    holder.refresh_from_db()
    # Equity = 1000 cash + 100 × mid: 1071, then 1041, then 1056.
    equities = list(
        EquitySnapshot.objects.filter(account=holder)
        .order_by("at", "id")
        .values_list("equity", flat=True)
    )
    assert equities[-3:] == [Decimal("1071"), Decimal("1041"), Decimal("1056")]
    assert holder.high_water_mark == Decimal("1071")
    assert holder.max_drawdown == Decimal("30")  # 1071 → 1041
    assert EquitySnapshot.objects.filter(account=flat).count() == snapshots_before


def test_closed_accounts_are_sealed_and_the_task_runs_the_service():
    holder = open_account("holder", with_position=True)
    get_bus().publish([quote("0.60", "0.62")])
    account_close(account=holder)
    count = EquitySnapshot.objects.filter(account=holder).count()
    assert equity_snapshots.delay().get() == 0
    assert EquitySnapshot.objects.filter(account=holder).count() == count
