"""The envelope's fixed-SQL loader against an independent ORM reference, on accounts with
positions (marked and unmarked, several epochs), live and finished orders, equity snapshots
on both sides of the day boundary, resets and closes — and the hand-built response body
against the serializer that documents it."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import time_machine

from accounts.models import Account, EquitySnapshot, Position
from core.money import ZERO, cash, pct
from partners.services import partner_account_open, trader_register
from tests.factories import TenantFactory
from trading.models import Order
from trading.selectors import account_state
from trading.services import account_close, account_reset
from trading.wire import ENVELOPE, AccountEnvelopeOutput, PositionOutput

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 5, 6, 15, 30, tzinfo=dt.UTC)
BOUNDARY = dt.datetime(2026, 5, 6, 12, 0, tzinfo=dt.UTC)  # noon UTC, set on the tenant below


def reference_state(account: Account) -> dict:
    """Straight from the models, the obvious way (what the loader must agree with)."""
    account.refresh_from_db()
    positions = list(
        Position.objects.filter(account=account, epoch=account.epoch, status="open", size__gt=0)
    )
    value = sum(
        (
            cash(p.size * (p.last_mark if p.last_mark is not None else p.avg_price))
            for p in positions
        ),
        ZERO,
    )
    cost = sum((p.cost_basis for p in positions), ZERO)
    equity = account.cash + value
    hwm = max(account.high_water_mark, equity)
    snaps = EquitySnapshot.objects.filter(account=account, epoch=account.epoch)
    before = snaps.filter(at__lte=BOUNDARY).order_by("-at", "-id").first()
    first = snaps.order_by("at", "id").first()
    day_start = before.equity if before else first.equity
    return {
        "balance": account.cash,
        "available_balance": account.cash - account.reserved_cash,
        "positions_value": value,
        "equity": equity,
        "unrealized_pnl": value - cost,
        "high_water_mark": hwm,
        "drawdown": hwm - equity,
        "drawdown_pct": pct(hwm - equity, hwm),
        "day_start_equity": day_start,
        "day_start_at": BOUNDARY if before else first.at,
        "daily_pnl": equity - day_start,
        "open_orders_count": Order.objects.filter(account=account, status="live").count(),
        "positions": sorted(p.token_id for p in positions),
        "epoch": account.epoch,
        "status": account.status,
    }


def loaded(account: Account) -> dict:
    state = account_state(account_id=account.pk, tenant=account.tenant)
    assert state is not None
    got = {k: state[k] for k in reference_state(account) if k in state}
    got["positions"] = sorted(m.position.token_id for m in state["positions"])
    got["epoch"] = state["account"].epoch
    got["status"] = state["account"].status
    return got


@pytest.fixture
def world():
    tenant = TenantFactory(slug="acme", day_boundary_tz="UTC", day_boundary_time=dt.time(12, 0))
    mapping, _ = trader_register(tenant=tenant, external_id="t", email="t@example.com")
    with time_machine.travel(NOW - dt.timedelta(days=2), tick=False):
        account, _ = partner_account_open(
            tenant=tenant, user_id=mapping.user_id, external_id="a", stage="challenge",
            starting_balance=Decimal("5000"),
        )  # fmt: skip
    return tenant, mapping, account


def add_position(account, token, size, avg, mark=None, epoch=None, status="open"):
    return Position.objects.create(
        account=account, epoch=account.epoch if epoch is None else epoch, token_id=token,
        market_id="0xm", market_question="Q?", outcome="Yes", size=Decimal(size),
        avg_price=Decimal(avg), cost_basis=cash(Decimal(size) * Decimal(avg)), status=status,
        last_mark=Decimal(mark) if mark else None,
        last_mark_at=NOW - dt.timedelta(minutes=1) if mark else None,
    )  # fmt: skip


def add_order(account, status="live", reserved="0"):
    Order.objects.create(
        account=account, epoch=account.epoch, token_id="tok", market_id="0xm", side="BUY",
        type="limit", time_in_force="GTC", price=Decimal("0.4"), size=Decimal("10"),
        status=status, reserved_cash=Decimal(reserved),
    )  # fmt: skip


def snapshot(account, equity, at):
    EquitySnapshot.objects.create(
        account=account, epoch=account.epoch, equity=Decimal(equity), cash=account.cash, at=at
    )


@time_machine.travel(NOW, tick=False)
def test_rich_account_matches_the_reference(world):
    _, _, account = world
    Account.objects.filter(pk=account.pk).update(
        cash=Decimal("4321.123456"), reserved_cash=Decimal("4"), high_water_mark=Decimal("5100")
    )
    add_position(account, "tok-a", "100", "0.42", mark="0.615")
    add_position(account, "tok-b", "33.333333", "0.77")  # never marked: at cost
    add_position(account, "tok-zero", "0", "0.5", mark="0.9")  # sold out: not shown
    add_position(account, "tok-old", "50", "0.5", mark="0.5", epoch=7)  # other epoch
    add_order(account, "live", "4")
    add_order(account, "canceled")
    snapshot(account, "4999.5", BOUNDARY - dt.timedelta(hours=3))
    snapshot(account, "5050.25", BOUNDARY - dt.timedelta(seconds=1))
    snapshot(account, "5200", BOUNDARY + dt.timedelta(hours=1))
    expected = reference_state(account)
    assert loaded(account) == expected
    assert expected["positions"] == ["tok-a", "tok-b"] and expected["open_orders_count"] == 1
    assert expected["day_start_equity"] == Decimal("5050.25")


@time_machine.travel(NOW, tick=False)
def test_account_opened_after_the_boundary_starts_its_day_at_opening_equity(world):
    tenant, mapping, _ = world
    account, _ = partner_account_open(
        tenant=tenant, user_id=mapping.user_id, external_id="late", stage="demo",
        starting_balance=Decimal("250.5"),
    )  # fmt: skip
    expected = reference_state(account)
    assert loaded(account) == expected
    assert expected["day_start_equity"] == Decimal("250.5")
    assert expected["day_start_at"] == NOW


@time_machine.travel(NOW, tick=False)
def test_reset_and_closed_accounts_match_the_reference(world):
    _, _, account = world
    add_position(account, "tok-a", "10", "0.3", mark="0.8")
    account_reset(account=account)
    add_position(Account.objects.get(pk=account.pk), "tok-new", "5", "0.6")
    assert loaded(account) == reference_state(account)
    account_close(account=account)
    state = loaded(account)
    assert state == reference_state(account)
    assert state["status"] == "closed" and state["epoch"] == 1 and state["positions"] == ["tok-new"]


def test_scope_and_malformed_ids_are_not_found(world):
    _, _, account = world
    other = TenantFactory(slug="other")
    assert account_state(account_id=account.pk, tenant=other) is None
    assert account_state(account_id=account.pk, tenant=None) is None
    assert account_state(account_id="not-a-uuid", tenant=account.tenant) is None


def test_body_has_exactly_the_documented_fields(world):
    _, _, account = world
    add_position(account, "tok-a", "100", "0.42", mark="0.615")
    state = account_state(account_id=account.pk, tenant=account.tenant)
    body = ENVELOPE.render(state)
    assert body == dict(AccountEnvelopeOutput(state).data)  # the Shape renders as DRF does
    assert set(body) == set(AccountEnvelopeOutput().fields)
    assert set(body["positions"][0]) == set(PositionOutput().fields)
    assert body["positions"][0]["market_value"] == "61.50"
    assert body["equity"] == "5061.50"


def test_mapping_renders_as_its_serializer_does(world):
    from partners.apis import MAPPING, MappingOutput
    from partners.models import TenantUser

    mapping = TenantUser.objects.select_related("user").get()
    assert MAPPING.render(mapping) == dict(MappingOutput(mapping).data)
