"""Maker fills: a resting order fills at its own limit price, as maker, with no fee, when the
live market reaches it (trading-engine.md §4, docs/fill-model.md "Maker fills").

Two triggers, each one service, called by the matcher (trading.matcher) per crossing order:
* `order_fill_maker_cross`: the opposite best crosses the order; it takes what the crossing
  levels show, less depletion (shared with taker fills: the same shown shares are never
  consumed twice), best level first.
* `order_fill_maker_trade`: a trade printed through the order's price (fills up to the
  trade's size, shared across orders by the matcher), or at exactly its price once the size
  queued ahead of it when it arrived has traded (`Order.queue_ahead`).

Both are exactly-once per trigger: `trigger_key` is the bus entry + item + order, checked
under the account row lock before anything moves and backed by the unique `Fill.trigger_key`;
queue advances carry the trigger in `Order.queue_trigger` (sortable, so a replay of an older
print is not counted twice). Locking: the account row, then the order row, then the
position rows (the order of every other path, C1); one transaction per trigger and order,
retried on deadlock/serialization failure.

A fill is on the matcher's critical path (p99 from book update to committed fill < 100 ms),
so it is written in few round trips and its locking reads are fixed SQL: the account row lock
brings its tenant's day boundary, the order row lock also brings back the
duplicate check, the order's market and the account's last fill time; one statement locks and
reads every open position of the account (the filled one and the others the equity snapshot
values); the account row is written once, with the cash, reservations, P&L, fill numbering
and high-water mark together.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from functools import cache
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_time

from accounts.models import Account, LedgerEntry, Position
from accounts.services.wallets import equity_snapshot_record, ledger_post
from core import errors
from core.clock import trading_day
from core.db import db_datetime, db_param_uuid, retry_on_conflict
from core.money import CASH_QUANTUM, ZERO
from marketdata import states as market_states
from marketdata.bus import BookTop, TradePrint, get_bus, latest_many_live
from marketdata.models import Market, Token
from partners.models import Tenant
from trading import states
from trading.depletion import Take, get_depletion_store, level_key, memories
from trading.fillmodel import crosses, walk_book
from trading.models import Fill, Order, Side
from trading.selectors import MarkedPosition, PositionRow, position_mark
from trading.services.fills import fills_append, position_apply

PRICE_Q = Decimal("0.000001")
DEPLETION_ATTEMPTS = 16


@dataclass(frozen=True)
class MakerResult:
    """What a maker trigger did to one order. `outcome`: `filled`, `duplicate` (this trigger
    was already applied), `gone` (the order no longer rests: cancelled, expired, filled,
    market closed...), `none` (nothing to take: depleted, queue ahead not yet traded).
    `remaining` is the order's remaining size after it (0 when gone)."""

    outcome: str
    size: Decimal
    remaining: Decimal
    queue_ahead: Decimal
    fill: Fill | None = None


def _remaining(order: Order) -> Decimal:
    assert order.size is not None
    return order.size - order.filled_size


@dataclass(frozen=True)
class _Locked:
    """What a maker fill works on, read under the account and order row locks."""

    account: Account
    order: Order
    outcome: str  # the order token's outcome label
    market_id: str
    question: str
    previous_filled_at: dt.datetime | None  # the account's last fill's (fills_append)


@cache
def _sql(for_update_of: bool) -> tuple[str, str, str]:
    """The three locking reads of a fill, as fixed SQL: building them with the ORM (joins,
    six subqueries) cost more CPU than the matcher has per fill. Only model table names are
    interpolated; every value is a bound parameter. SQLite has no row locks (no FOR UPDATE)."""
    account, tenant = Account._meta.db_table, Tenant._meta.db_table
    order, fill = Order._meta.db_table, Fill._meta.db_table
    token, market = Token._meta.db_table, Market._meta.db_table
    position = Position._meta.db_table

    def lock(alias: str) -> str:
        return f"FOR UPDATE OF {alias}" if for_update_of else ""

    account_sql = f"""
        SELECT a.*, t.day_boundary_tz AS tenant_tz, t.day_boundary_time AS tenant_time
          FROM {account} a LEFT JOIN {tenant} t ON t.id = a.tenant_id
         WHERE a.id = %s {lock("a")}
    """
    order_sql = f"""
        SELECT o.*,
               EXISTS (SELECT 1 FROM {fill} f WHERE f.trigger_key = %s) AS duplicate,
               (SELECT f.filled_at FROM {fill} f WHERE f.account_id = o.account_id AND f.seq = %s)
                 AS previous_filled_at,
               tk.outcome AS token_outcome, m.condition_id AS token_market_id,
               m.question AS token_question, m.closed AS market_closed,
               m.status AS market_status, m.accepting_orders AS market_accepting
          FROM {order} o
          LEFT JOIN {token} tk ON tk.token_id = o.token_id
          LEFT JOIN {market} m ON m.id = tk.market_id
         WHERE o.id = %s AND o.account_id = %s {lock("o")}
    """
    positions_sql = f"""
        SELECT p.* FROM {position} p
         WHERE p.account_id = %s AND p.epoch = %s
           AND (p.token_id = %s OR (p.status = %s AND p.size > 0))
         ORDER BY p.opened_at, p.id {lock("p")}
    """
    return account_sql, order_sql, positions_sql


def _first(rows: Any) -> Any:
    return next(iter(rows), None)


def _locked(order_id: Any, account_id: Any, trigger_key: str) -> _Locked | MakerResult:
    """Account lock, then the order row lock; `gone` unless the order (of that account)
    still rests and may trade (live, its epoch, an open market accepting orders, not past
    its GTD expiration); `duplicate` if `trigger_key` was already applied (read after the
    account lock: every fill of the account commits under it). Two statements."""
    account_sql, order_sql, _ = _sql(connection.features.has_select_for_update_of)
    try:
        account_key = db_param_uuid(uuid.UUID(str(account_id)))
        order_key = db_param_uuid(uuid.UUID(str(order_id)))
    except ValueError:
        return MakerResult("gone", ZERO, ZERO, ZERO)
    account = _first(Account.objects.raw(account_sql, [account_key]))
    if account is None:
        return MakerResult("gone", ZERO, ZERO, ZERO)
    order = _first(
        Order.objects.raw(order_sql, [trigger_key, account.last_fill_seq, order_key, account_key])
    )
    if (
        order is None
        or order.status != Order.Status.LIVE
        or order.size is None
        or _remaining(order) <= 0
        or account.is_closed
        or order.epoch != account.epoch
        or (order.expiration is not None and order.expiration <= timezone.now())
    ):
        return MakerResult("gone", ZERO, ZERO, ZERO)
    if (
        order.token_market_id is None
        or order.market_closed
        or order.market_status != market_states.OPEN
        or not order.market_accepting
    ):
        return MakerResult("gone", ZERO, _remaining(order), order.queue_ahead)
    if order.duplicate:
        return MakerResult("duplicate", ZERO, _remaining(order), order.queue_ahead)
    return _Locked(
        account,
        order,
        order.token_outcome,
        order.token_market_id,
        order.token_question,
        db_datetime(order.previous_filled_at),
    )


@retry_on_conflict()
@transaction.atomic
def order_fill_maker_cross(
    *, order_id: Any, account_id: Any, trigger_key: str, top: BookTop
) -> MakerResult:
    """Fill a resting order that the opposite best of `top` crosses, at its own limit price,
    for what the crossing levels show less depletion, up to its remaining size.

    `account_id` is the order's account (from the matcher's index; an order of another
    account is `gone`). The caller checked that `top` is fresh (live) and newer than the
    order. Locking: account, order, position rows (in that order); depletion is taken with
    its compare-and-set while the rows are held, so a cancel racing this fill either wins
    (the order is gone, nothing taken) or waits. Idempotent per `trigger_key` (a replayed
    bus entry fills nothing)."""
    got = _locked(order_id, account_id, trigger_key)
    if isinstance(got, MakerResult):
        return got
    order = got.order
    remaining = _remaining(order)
    rows = top.asks if order.side == Side.BUY else top.bids
    crossing: list[tuple[Decimal, Decimal]] = []
    for p, s in rows:
        price = Decimal(p)
        if not crosses(order.side, price, order.price):
            break
        crossing.append((price, Decimal(s)))
    if not crossing:
        return MakerResult("none", ZERO, remaining, order.queue_ahead)
    book_side = "asks" if order.side == Side.BUY else "bids"
    store = get_depletion_store()
    keys = [level_key(order.token_id, book_side, p) for p, _ in crossing]
    for _ in range(DEPLETION_ATTEMPTS):
        mems = memories(store, keys, [s for _, s in crossing])
        walk = walk_book(
            side=order.side,
            levels=[(p, s, s - m.taken) for (p, s), m in zip(crossing, mems, strict=True)],
            limit=order.price,
            size=remaining,
        )
        if not walk.takes:
            return MakerResult("none", ZERO, remaining, order.queue_ahead)
        index = {p: i for i, (p, _) in enumerate(crossing)}
        takes = [
            Take(keys[index[t.price]], mems[index[t.price]].raw, t.published,
                 mems[index[t.price]].taken, t.size)
            for t in walk.takes
        ]  # fmt: skip
        if store.commit(takes):
            break
    else:
        raise errors.ServiceUnavailable("The book is too busy; retry.")
    fill = _apply(
        got,
        size=walk.filled,
        trigger_key=trigger_key,
        price_source="book",
        top=top,
        levels=[[str(t.price), str(t.size)] for t in walk.takes],
    )
    return MakerResult("filled", walk.filled, _remaining(order), order.queue_ahead, fill)


@retry_on_conflict()
@transaction.atomic
def order_fill_maker_trade(
    *,
    order_id: Any,
    account_id: Any,
    trigger_key: str,
    queue_trigger: str,
    trade: TradePrint,
    available: Decimal,
    top: BookTop | None = None,
) -> MakerResult:
    """Apply a trade print to a resting order: through its price (BUY p: trade < p; SELL p:
    trade > p) it fills up to `available` (what is left of the print's size for our orders);
    at exactly its price the print first consumes the size queued ahead of the order
    (`queue_ahead`, persisted), and only what exceeds it fills, again up to `available`.
    Fills are at the order's own limit price, as maker, no fee.

    Locking as order_fill_maker_cross. Idempotent: `trigger_key` for the fill, and
    `queue_trigger` (sortable) for the queue advance — a print at or before the order's
    last counted one changes nothing."""
    got = _locked(order_id, account_id, trigger_key)
    if isinstance(got, MakerResult):
        return got
    order = got.order
    remaining = _remaining(order)
    price = trade.price_value()
    at_price = price == order.price
    take = min(remaining, available)
    if at_price:
        if order.queue_trigger and order.queue_trigger >= queue_trigger:
            return MakerResult("duplicate", ZERO, remaining, order.queue_ahead)
        size = trade.size_value()
        beyond = size - order.queue_ahead
        order.queue_ahead = max(ZERO, order.queue_ahead - size)
        order.queue_trigger = queue_trigger
        take = min(take, max(ZERO, beyond))
        Order.objects.filter(pk=order.pk).update(
            queue_ahead=order.queue_ahead, queue_trigger=queue_trigger
        )
    elif not crosses(order.side, price, order.price):
        return MakerResult("none", ZERO, remaining, order.queue_ahead)
    take = take.quantize(Decimal("0.01"), rounding=ROUND_DOWN)
    if take <= 0:
        return MakerResult("none", ZERO, remaining, order.queue_ahead)
    fill = _apply(
        got,
        size=take,
        trigger_key=trigger_key,
        price_source="trade",
        top=top,
        levels=[[trade.price, str(take)]],
        trade=trade,
    )
    return MakerResult("filled", take, _remaining(order), order.queue_ahead, fill)


def _release_buy(order: Order, size: Decimal) -> Decimal:
    """Cash a BUY's reservation gives back when `size` of it fills as maker: the notional at
    its limit price plus the matching share of the taker-fee cushion it reserved (floored,
    so what stays reserved always covers price × remaining); all of it on the last fill."""
    remaining = _remaining(order)
    if size >= remaining:
        return order.reserved_cash
    cushion = max(ZERO, order.reserved_cash - order.price * remaining)
    return order.price * size + (cushion * size / remaining).quantize(
        CASH_QUANTUM, rounding=ROUND_DOWN
    )


def _apply(
    locked: _Locked,
    *,
    size: Decimal,
    trigger_key: str,
    price_source: str,
    top: BookTop | None,
    levels: list[list[str]],
    trade: TradePrint | None = None,
) -> Fill:
    """Move the money of one maker fill and snapshot the account's equity. Caller holds the
    account and order row locks (`_locked`); this locks the account's open positions."""
    account, order = locked.account, locked.order
    now = timezone.now()
    price = order.price
    notional = price * size
    # The filled position and every other open one (for the equity snapshot), in one
    # statement; all of them are the account's, whose row lock we hold.
    positions = list(
        Position.objects.raw(
            _sql(connection.features.has_select_for_update_of)[2],
            [db_param_uuid(account.pk), order.epoch, order.token_id, Position.Status.OPEN],
        )
    )
    position = next((p for p in positions if p.token_id == order.token_id), None)
    if position is None:
        if order.side == Side.SELL:  # a live SELL always has its reserved position
            raise IntegrityError(f"live SELL {order.pk} has no position")
        position = Position(
            account=account,
            epoch=order.epoch,
            token_id=order.token_id,
            market_id=locked.market_id,
            market_question=locked.question,
            outcome=locked.outcome,
            opened_at=now,
        )
        positions.append(position)
    if order.side == Side.BUY:
        release = _release_buy(order, size)
        order.reserved_cash -= release
        account.reserved_cash -= release  # before the cash leaves: available never dips
    else:
        order.reserved_shares -= size
        position.reserved_size -= size
    realized = position_apply(position, side=order.side, size=size, notional=notional, fee=ZERO)

    order.filled_size += size
    order.filled_notional += notional
    target = states.MATCHED if _remaining(order) <= 0 else states.LIVE
    states.ensure_transition(order.status, target)
    order.status = target
    if target == states.MATCHED:
        # A SELL's last hundredth releases exactly what is left reserved.
        position.reserved_size -= order.reserved_shares
        order.reserved_shares = ZERO
        order.reserved_cash = ZERO
    position.save()

    mid = top.mid_value() if top is not None else None
    mid_gap = None
    if mid is not None:
        gap = price - mid if order.side == Side.BUY else mid - price
        mid_gap = gap.quantize(PRICE_Q, rounding=ROUND_HALF_EVEN)
    as_of_ms = (
        trade.timestamp_ms if trade is not None else (top.timestamp_ms if top is not None else None)
    )
    fill = Fill(
        account=account,
        seq=0,  # numbered by fills_append
        epoch=order.epoch,
        kind=Fill.Kind.FILL,
        order=order,
        token_id=order.token_id,
        market_id=order.market_id,
        market_question=locked.question,
        outcome=locked.outcome,
        side=order.side,
        price=price,
        size=size,
        notional=notional,
        fee=ZERO,
        fee_rate_bps=ZERO,
        liquidity=Fill.Liquidity.MAKER,
        realized_pnl=realized,
        price_source=price_source,
        book_as_of=dt.datetime.fromtimestamp(as_of_ms / 1000, dt.UTC) if as_of_ms else None,
        book_hash=top.hash if top is not None and price_source == "book" else "",
        levels=levels,
        vwap=price,
        mid_gap=mid_gap,
        trigger_key=trigger_key,
        filled_at=now,
    )
    ledger_post(
        account=account,
        kind=LedgerEntry.Kind.TRADE,
        amount=-notional if order.side == Side.BUY else notional,
        order_id=order.pk,
        fill_id=fill.pk,
        memo=f"{order.side} {size} @ {price} (maker)",
        save_account=False,  # written below with everything else
    )
    fills_append(account=account, fills=[fill], previous_filled_at=locked.previous_filled_at)
    order.save(
        update_fields=[
            "status",
            "filled_size",
            "filled_notional",
            "reserved_cash",
            "reserved_shares",
            "updated_at",
        ]
    )
    account.realized_pnl += realized
    day = _trading_day(account, now)
    if account.last_trading_day != day:
        account.trading_days += 1
        account.last_trading_day = day
    equity_snapshot_record(
        account=account,
        positions_value=_positions_value(positions),
        at=now,
        save_account=False,  # written below
    )
    Account.objects.filter(pk=account.pk).update(
        cash=account.cash,
        reserved_cash=account.reserved_cash,
        realized_pnl=account.realized_pnl,
        last_fill_seq=account.last_fill_seq,
        trading_days=account.trading_days,
        last_trading_day=account.last_trading_day,
        high_water_mark=account.high_water_mark,
        max_drawdown=account.max_drawdown,
        max_drawdown_pct=account.max_drawdown_pct,
        updated_at=now,
    )
    return fill


def _positions_value(positions: list[Position]) -> Decimal:
    """The open positions' market value at their live marks, exactly as
    `trading.selectors.open_positions` values them (same rows: open with shares)."""
    rows = [
        PositionRow(
            token_id=p.token_id,
            market_id=p.market_id,
            market_question=p.market_question,
            outcome=p.outcome,
            size=p.size,
            avg_price=p.avg_price,
            cost_basis=p.cost_basis,
            last_mark=p.last_mark,
            last_mark_at=p.last_mark_at,
        )
        for p in positions
        if p.status == Position.Status.OPEN and p.size > 0
    ]
    if not rows:
        return ZERO
    tops = latest_many_live(get_bus(), [r.token_id for r in rows])
    return sum(
        (MarkedPosition(r, position_mark(r, tops.get(r.token_id))).market_value for r in rows),
        ZERO,
    )


def _trading_day(account: Account, now: dt.datetime) -> dt.date:
    """The account's trading day now; the tenant's boundary came with the account row."""
    if account.tenant_id is None:
        return trading_day(now, "UTC", dt.time(0, 0))
    at = account.tenant_time  # type: ignore[attr-defined]
    boundary = at if isinstance(at, dt.time) else parse_time(str(at))
    assert boundary is not None
    return trading_day(now, account.tenant_tz, boundary)  # type: ignore[attr-defined]
