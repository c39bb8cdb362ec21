"""Reads that combine wallets, orders and prices: marks, equity, the account-state envelope.

The envelope is the hottest partner read (rule engines poll it), so it is loaded with two fixed
SQL statements of the data-access module (trading.store) — the account row with its open-order
count and day-start equity as subqueries, then its open positions only when it has any: the
same read through the ORM's annotate/Subquery cost ~20× the client CPU of the fixed SQL
(docs/benchmarks.md).
All the arithmetic lives in `_compute`, one place for every caller.

Marks (docs/partner-api.md): the outcome's midpoint, or the last trade when the spread is wider
than 0.10, from the live price bus; when the book is not live (stale, or its feed stopped
beating), its last price flagged `last_known` with its age; a position never priced by a
book is marked at cost (`cost`). `mark_source` always says which; a mark is never silently
zero.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.utils import timezone

from accounts.models import Account, EquitySnapshot, Position
from core.clock import day_boundary, from_ms
from core.db import db_datetime, db_decimal, db_json, db_uuid
from core.money import ZERO, cash, pct
from marketdata.bus import BookTop, get_bus, latest_many_live
from trading import store
from trading.engine import book_mark, value_at
from trading.fillmodel import walk_book
from trading.models import Order


@dataclass(frozen=True)
class Mark:
    price: Decimal
    source: str  # "mid" | "last_trade" | "last_known" | "cost"
    as_of: dt.datetime | None


@dataclass(frozen=True)
class PositionRow:
    token_id: str
    market_id: str
    market_question: str
    outcome: str
    size: Decimal
    avg_price: Decimal
    cost_basis: Decimal
    last_mark: Decimal | None
    last_mark_at: dt.datetime | None


@dataclass(frozen=True)
class MarkedPosition:
    position: PositionRow
    mark: Mark
    top: BookTop | None = None  # the token's book as read for the mark (live-narrowed)

    @property
    def market_value(self) -> Decimal:
        return value_at(self.position.size, self.mark.price)

    @property
    def unrealized_pnl(self) -> Decimal:
        return self.market_value - self.position.cost_basis

    @property
    def max_loss_at_resolution(self) -> Decimal:
        # If the outcome resolves against the holder the shares pay 0: the whole market value
        # at the current mark is what is lost from equity.
        return self.market_value


@dataclass(frozen=True)
class AccountRow:
    """The account columns the envelope shows, plus what the subqueries found."""

    id: uuid.UUID
    owner_id: int
    external_id: str | None
    stage: str | None
    status: str
    epoch: int
    rules: dict[str, Any]
    metadata: dict[str, Any]
    starting_balance: Decimal
    cash: Decimal
    reserved_cash: Decimal
    realized_pnl: Decimal
    fees_paid: Decimal
    high_water_mark: Decimal
    max_drawdown: Decimal
    max_drawdown_pct: Decimal
    trading_days: int
    created_at: dt.datetime
    updated_at: dt.datetime
    closed_at: dt.datetime | None
    last_reset_at: dt.datetime | None
    open_orders_count: int
    equity_at_boundary: Decimal | None
    first_equity: Decimal | None
    first_equity_at: dt.datetime | None
    has_positions: bool


def position_mark(position: PositionRow, top: BookTop | None = None) -> Mark:
    """The live mark from the token's book on the price bus (`top.fresh` already means live:
    fresh and its feed beating); a book that is not live gives its last price flagged
    `last_known` with its age; then the position's stored mark; then cost. Never zero by
    default."""
    if top is not None:
        priced = book_mark(top)
        if priced is not None:
            as_of = from_ms(top.timestamp_ms or top.published_at)
            return Mark(priced[0], priced[1] if top.fresh else "last_known", as_of)
    if position.last_mark is not None:
        return Mark(position.last_mark, "last_known", position.last_mark_at)
    return Mark(position.avg_price, "cost", None)


def liquidation_value(
    *, size: Decimal, top: BookTop | None, rate: Decimal, exponent: Decimal
) -> Decimal | None:
    """What selling `size` shares into the token's live bids would yield now, after taker
    fees (docs/engine-rules.md §6, "liquidation value beside the mark"): the engine's own walk
    (fillmodel.walk_book, fee per level) of the published bid levels best-first, with no
    limit. Shares beyond the published depth add nothing. Depletion is not applied (it is a
    seconds-long memory of simulated takes, not the book). None without a live book."""
    if top is None or not top.fresh:
        return None
    if size <= 0:
        return ZERO
    bids = top.levels_value("BUY")
    walk = walk_book(
        side="SELL",
        levels=[(price, level, level) for price, level in bids],
        limit=ZERO,
        size=size,
        rate=rate,
        exponent=exponent,
    )
    return cash(walk.notional - walk.fees)


def positions_liquidation(marked: list[MarkedPosition]) -> dict[str, Decimal | None]:
    """liquidation_value per token of these positions, with each market's taker fee
    schedule (ONE query for all of them)."""
    if not marked:
        return {}
    from marketdata.models import Market

    fees = {
        m["condition_id"]: m
        for m in Market.objects.filter(
            condition_id__in={p.position.market_id for p in marked}
        ).values("condition_id", "fees_enabled", "fee_rate", "fee_exponent")
    }
    out: dict[str, Decimal | None] = {}
    for m in marked:
        schedule = fees.get(m.position.market_id)
        rate, exponent = ZERO, Decimal(1)
        if schedule and schedule["fees_enabled"] and schedule["fee_rate"]:
            rate = schedule["fee_rate"]
            if schedule["fee_exponent"] is not None:
                exponent = schedule["fee_exponent"]
        out[m.position.token_id] = liquidation_value(
            size=m.position.size, top=m.top, rate=rate, exponent=exponent
        )
    return out


def _load_positions(account_id: uuid.UUID, epoch: int) -> list[MarkedPosition]:
    rows = store.open_position_rows(account_id, epoch)
    # One bus read for all of them: the live books of the positions' tokens.
    tops = latest_many_live(get_bus(), [r[0] for r in rows]) if rows else {}
    marked = []
    for token, market, question, outcome, size, avg, cost, mark, mark_at in rows:
        row = PositionRow(
            token_id=token,
            market_id=market,
            market_question=question,
            outcome=outcome,
            size=db_decimal(size) or ZERO,
            avg_price=db_decimal(avg) or ZERO,
            cost_basis=db_decimal(cost) or ZERO,
            last_mark=db_decimal(mark),
            last_mark_at=db_datetime(mark_at),
        )
        top = tops.get(token)
        marked.append(MarkedPosition(row, position_mark(row, top), top))
    return marked


def open_positions(*, account: Account) -> list[MarkedPosition]:
    return _load_positions(account.pk, account.epoch)


def account_equity(*, account: Account) -> Decimal:
    return account.cash + sum((p.market_value for p in open_positions(account=account)), ZERO)


def _boundary_of(tenant: Any, now: dt.datetime) -> dt.datetime:
    if tenant is None:
        return day_boundary(now, "UTC", dt.time(0, 0))
    return day_boundary(now, tenant.day_boundary_tz, tenant.day_boundary_time)


def _load_account(
    account_id: Any, tenant: Any, boundary: dt.datetime, owner_id: int | None = None
) -> AccountRow | None:
    try:
        key = account_id if isinstance(account_id, uuid.UUID) else uuid.UUID(str(account_id))
    except (ValueError, TypeError, AttributeError):
        return None
    row = store.envelope_row(
        key,
        tenant_id=None if tenant is None else tenant.pk,
        owner_id=owner_id,
        boundary=boundary,
    )
    if row is None:
        return None
    (
        id_, owner_id, external_id, stage, status, epoch, rules, metadata, starting, cash_,
        reserved, realized, fees, hwm, max_dd, max_dd_pct, trading_days, created_at,
        updated_at, closed_at, last_reset_at, open_orders, at_boundary, first_equity,
        first_at, has_positions,
    ) = row  # fmt: skip
    return AccountRow(
        id=db_uuid(id_),  # type: ignore[arg-type]
        owner_id=owner_id,
        external_id=external_id,
        stage=stage,
        status=status,
        epoch=epoch,
        rules=db_json(rules),
        metadata=db_json(metadata),
        starting_balance=db_decimal(starting),  # type: ignore[arg-type]
        cash=db_decimal(cash_),  # type: ignore[arg-type]
        reserved_cash=db_decimal(reserved),  # type: ignore[arg-type]
        realized_pnl=db_decimal(realized),  # type: ignore[arg-type]
        fees_paid=db_decimal(fees),  # type: ignore[arg-type]
        high_water_mark=db_decimal(hwm),  # type: ignore[arg-type]
        max_drawdown=db_decimal(max_dd),  # type: ignore[arg-type]
        max_drawdown_pct=db_decimal(max_dd_pct),  # type: ignore[arg-type]
        trading_days=trading_days,
        created_at=db_datetime(created_at),  # type: ignore[arg-type]
        updated_at=db_datetime(updated_at),  # type: ignore[arg-type]
        closed_at=db_datetime(closed_at),
        last_reset_at=db_datetime(last_reset_at),
        open_orders_count=int(open_orders),
        equity_at_boundary=db_decimal(at_boundary),
        first_equity=db_decimal(first_equity),
        first_equity_at=db_datetime(first_at),
        has_positions=bool(has_positions),
    )


def account_state(
    *, account_id: Any, tenant: Any, owner_id: int | None = None
) -> dict[str, Any] | None:
    """Everything the envelope shows, or None when no such account exists in this scope
    (`tenant` None = personal accounts; `owner_id`, when given, additionally requires that
    user to own it — the trader API's scope). A malformed id is simply not found. Two
    statements at most (one when the account holds no positions); reads committed data, takes
    no lock."""
    now = timezone.now()
    boundary = _boundary_of(tenant, now)
    row = _load_account(account_id, tenant, boundary, owner_id)
    if row is None:
        return None
    marked = _load_positions(row.id, row.epoch) if row.has_positions else []
    return _compute(row, marked, now=now, boundary=boundary)


def _compute(
    row: AccountRow, marked: list[MarkedPosition], *, now: dt.datetime, boundary: dt.datetime
) -> dict[str, Any]:
    positions_value = sum((m.market_value for m in marked), ZERO)
    cost = sum((m.position.cost_basis for m in marked), ZERO)
    equity = row.cash + positions_value
    hwm = max(row.high_water_mark, equity)
    drawdown = hwm - equity
    day_start_at: dt.datetime | None
    if row.equity_at_boundary is not None:
        day_start_equity, day_start_at = row.equity_at_boundary, boundary
    elif row.first_equity is not None:
        # The epoch began after the boundary: the day started with the epoch's opening equity.
        day_start_equity, day_start_at = row.first_equity, row.first_equity_at
    else:
        day_start_equity, day_start_at = row.starting_balance, row.last_reset_at or row.created_at
    return {
        "account": row,
        "balance": row.cash,
        "available_balance": row.cash - row.reserved_cash,
        "reserved_balance": row.reserved_cash,
        "positions_value": positions_value,
        "equity": equity,
        "realized_pnl": row.realized_pnl,
        "unrealized_pnl": positions_value - cost,
        "fees_paid": row.fees_paid,
        "high_water_mark": hwm,
        "drawdown": drawdown,
        "drawdown_pct": pct(drawdown, hwm),
        "max_drawdown": max(row.max_drawdown, drawdown),
        "max_drawdown_pct": max(row.max_drawdown_pct, pct(drawdown, hwm)),
        "day_start_equity": day_start_equity,
        "day_start_at": day_start_at,
        "daily_pnl": equity - day_start_equity,
        "trading_days": row.trading_days,
        "open_orders_count": row.open_orders_count,
        "positions": marked,
        "as_of": now,
        "prices_as_of": min((m.mark.as_of for m in marked if m.mark.as_of), default=None),
    }


EQUITY_INTERVALS = {"1m": 60, "1h": 3600, "1d": 86400}
EQUITY_MAX_POINTS = 5000


def equity_series(
    *, account: Account, epoch: int, start: dt.datetime, end: dt.datetime, interval_s: int
) -> list[dict[str, Any]]:
    """Equity per interval (open/high/low/close of the snapshots in it) for one epoch, from
    the snapshots taken at open/reset, at every fill and each minute while positions are held.
    Buckets are aligned to the Unix epoch (UTC); intervals without a snapshot are omitted."""
    rows = (
        EquitySnapshot.objects.filter(account=account, epoch=epoch, at__gte=start, at__lt=end)
        .order_by("at", "id")
        .values_list("at", "equity")
    )
    points: list[dict[str, Any]] = []
    current: int | None = None
    for at, equity in rows.iterator(chunk_size=2000):
        bucket = int(at.timestamp()) // interval_s * interval_s
        if bucket != current:
            current = bucket
            points.append(
                {
                    "t": dt.datetime.fromtimestamp(bucket, dt.UTC),
                    "open": equity,
                    "high": equity,
                    "low": equity,
                    "close": equity,
                }
            )
        else:
            point = points[-1]
            point["high"] = max(point["high"], equity)
            point["low"] = min(point["low"], equity)
            point["close"] = equity
    return points


def feed_tokens_wanted() -> set[str]:
    """Tokens the price feed must stream for trading: every token with a live order or an
    open position (wired into the ingester through MARKETDATA_TOKEN_SOURCES, so marketdata
    never imports trading)."""
    live = Order.objects.filter(status=Order.Status.LIVE).values_list("token_id", flat=True)
    held = Position.objects.filter(status=Position.Status.OPEN, size__gt=0).values_list(
        "token_id", flat=True
    )
    return set(live) | set(held)


@dataclass(frozen=True)
class FeedPage:
    fills: list[Any]
    next_cursor: str
    has_more: bool


def fill_feed_page(
    *,
    account: Account,
    cursor: str | None,
    limit: int,
    since: dt.datetime | None = None,
    epoch: int | None = None,
) -> FeedPage:
    """One page of an account's fills and settlements, ascending by the per-account `seq`
    (assigned under the account lock, so commit order). Append-only: `next_cursor` is always
    returned, pointing just after the last item (or at the start), so a poller that stores it
    never misses or repeats an item. The cursor is bound to this account."""
    from core.pagination import encode_cursor, keyset_page
    from trading.models import Fill

    qs = Fill.objects.filter(account=account)
    if since is not None:
        qs = qs.filter(filled_at__gte=since)
    if epoch is not None:
        qs = qs.filter(epoch=epoch)
    scope = f"trades:{account.pk}"
    page = keyset_page(
        qs, scope=scope, fields=("seq",), cursor=cursor, limit=limit, always_cursor=True
    )
    return FeedPage(
        fills=page.items,
        next_cursor=page.next_cursor or encode_cursor(scope, [0]),
        has_more=page.has_more,
    )
