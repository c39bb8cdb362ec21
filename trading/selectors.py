"""Reads that combine wallets, orders and prices: marks, equity, the account-state envelope.

Marks (partner-api.md §4): the outcome's midpoint, or the last trade when the spread is wider
than 0.10, from the live price bus — wired in by the market-data and engine issues (#3, #4).
Until then a position is marked at its last known mark, or at cost when it never had one, and
`mark_source` says so; a mark is never silently zero.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.utils import timezone

from accounts.models import Account, EquitySnapshot, Position
from core.clock import day_boundary
from core.money import ZERO, cash, pct
from trading.models import Order


@dataclass(frozen=True)
class Mark:
    price: Decimal
    source: str  # "mid" | "last_trade" | "last_known" | "cost"
    as_of: dt.datetime | None


@dataclass(frozen=True)
class MarkedPosition:
    position: Position
    mark: Mark

    @property
    def market_value(self) -> Decimal:
        return cash(self.position.size * self.mark.price)

    @property
    def unrealized_pnl(self) -> Decimal:
        return self.market_value - self.position.cost_basis

    @property
    def max_loss_at_resolution(self) -> Decimal:
        # If the outcome resolves against the holder the shares pay 0: the whole market value
        # at the current mark is what is lost from equity.
        return self.market_value


def position_mark(position: Position) -> Mark:
    if position.last_mark is not None:
        return Mark(position.last_mark, "last_known", position.last_mark_at)
    return Mark(position.avg_price, "cost", None)


def open_positions(*, account: Account) -> list[MarkedPosition]:
    positions = Position.objects.filter(
        account=account, epoch=account.epoch, status=Position.Status.OPEN, size__gt=0
    ).order_by("opened_at", "id")
    return [MarkedPosition(p, position_mark(p)) for p in positions]


def account_equity(*, account: Account) -> Decimal:
    return account.cash + sum((p.market_value for p in open_positions(account=account)), ZERO)


def _day_start(account: Account, now: dt.datetime) -> tuple[Decimal, dt.datetime]:
    tenant = account.tenant
    tz_name = tenant.day_boundary_tz if tenant else "UTC"
    local_time = tenant.day_boundary_time if tenant else dt.time(0, 0)
    boundary = day_boundary(now, tz_name, local_time)
    before = (
        EquitySnapshot.objects.filter(account=account, epoch=account.epoch, at__lte=boundary)
        .order_by("-at", "-id")
        .values_list("equity", flat=True)
        .first()
    )
    if before is not None:
        return before, boundary
    # The epoch began after the boundary: the day started with the epoch's opening equity.
    first = (
        EquitySnapshot.objects.filter(account=account, epoch=account.epoch)
        .order_by("at", "id")
        .values_list("equity", "at")
        .first()
    )
    if first is not None:
        return first[0], first[1]
    return account.starting_balance, account.last_reset_at or account.created_at


def account_state(*, account: Account) -> dict[str, Any]:
    """Everything the partner envelope shows, computed from the ledger-backed cached balances,
    marked positions and equity snapshots. Decimals stay Decimals; the API formats them."""
    now = timezone.now()
    marked = open_positions(account=account)
    positions_value = sum((m.market_value for m in marked), ZERO)
    cost = sum((m.position.cost_basis for m in marked), ZERO)
    equity = account.cash + positions_value
    hwm = max(account.high_water_mark, equity)
    drawdown = hwm - equity
    max_drawdown = max(account.max_drawdown, drawdown)
    max_drawdown_pct = max(account.max_drawdown_pct, pct(drawdown, hwm))
    day_start_equity, day_start_at = _day_start(account, now)
    prices_as_of = min((m.mark.as_of for m in marked if m.mark.as_of), default=None)
    open_orders = Order.objects.filter(account=account, status=Order.Status.LIVE).count()
    return {
        "account": account,
        "balance": account.cash,
        "available_balance": account.available_cash,
        "reserved_balance": account.reserved_cash,
        "positions_value": positions_value,
        "equity": equity,
        "realized_pnl": account.realized_pnl,
        "unrealized_pnl": positions_value - cost,
        "fees_paid": account.fees_paid,
        "high_water_mark": hwm,
        "drawdown": drawdown,
        "drawdown_pct": pct(drawdown, hwm),
        "max_drawdown": max_drawdown,
        "max_drawdown_pct": max_drawdown_pct,
        "day_start_equity": day_start_equity,
        "day_start_at": day_start_at,
        "daily_pnl": equity - day_start_equity,
        "trading_days": account.trading_days,
        "open_orders_count": open_orders,
        "positions": marked,
        "as_of": now,
        "prices_as_of": prices_as_of,
    }
