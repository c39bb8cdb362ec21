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
so it is fixed SQL in two round trips on PostgreSQL besides BEGIN and COMMIT. The locking
reads, in lock order: the account row (with its tenant's day boundary), the order row (with
the duplicate check, the order's market and the account's last fill time), and every
position the fill needs (the filled one and the account's other open ones, which the equity
snapshot values). The writes: the position, the ledger's TRADE entry, the fill, the order,
the equity snapshot, and the account row once (cash, reservations, P&L, fill numbering,
high-water mark together). The rules of the shared helpers that would write through the
ORM (`ledger_post`, `fills_append`, `equity_snapshot_record`) are applied here in memory.
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

from accounts.models import Account, EquitySnapshot, LedgerEntry, Position
from core import errors
from core.clock import trading_day
from core.db import db_datetime, db_param_uuid, retry_on_conflict
from core.money import CASH_QUANTUM, ZERO, cash, pct
from core.sqlrows import fetch_statements, model_from_row, run_statements
from marketdata import states as market_states
from marketdata.bus import BookTop, TradePrint, get_bus
from marketdata.models import Market, Token
from partners.models import Tenant
from trading import states
from trading.depletion import Take, get_depletion_store, level_key, memories
from trading.fillmodel import crosses, walk_book
from trading.models import Fill, Order, Side
from trading.services.fills import open_position_rows, position_apply, positions_value

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
    fill_id: uuid.UUID | None = None  # the fill's, when `filled`


def _remaining(order: Order) -> Decimal:
    assert order.size is not None
    return order.size - order.filled_size


@dataclass(frozen=True)
class _Locked:
    """What a maker fill works on, read under the account, order and position row locks."""

    account: Account
    order: Order
    outcome: str  # the order token's outcome label
    market_id: str
    question: str
    previous_filled_at: dt.datetime | None  # the account's last fill's (fills_append)
    positions: list[Position]  # the order token's (if any) and every other open one


# --- fixed SQL ---------------------------------------------------------------------------------
# A fill is a handful of rows; building and compiling them with the ORM (RawQuerySet column
# resolution, model saves, bulk_create) cost several times the database's own work. So the
# reads and writes are fixed, parameterised SQL; only model table and column names are
# interpolated. On PostgreSQL (client-side binding, Django's default) the statements of one
# phase go in ONE round trip (several statements in one query); SQLite runs them one by one.


@cache
def _fill_columns() -> list[str]:
    return [f.column for f in Fill._meta.concrete_fields]


# The columns a fill reads of each row: everything it uses, nothing else (the instances have
# the other fields deferred, never touched).
_ACCOUNT_READ = (
    "id", "tenant_id", "status", "epoch", "cash", "reserved_cash", "realized_pnl",
    "high_water_mark", "max_drawdown", "max_drawdown_pct", "trading_days", "last_trading_day",
    "last_fill_seq",
)  # fmt: skip
_ORDER_READ = (
    "id", "account_id", "epoch", "token_id", "market_id", "side", "price", "size", "expiration",
    "status", "filled_size", "filled_notional", "reserved_cash", "reserved_shares",
    "queue_ahead", "queue_trigger",
)  # fmt: skip
_POSITION_READ = (
    "id", "account_id", "epoch", "token_id", "market_id", "market_question", "outcome",
    "status", "size", "reserved_size", "avg_price", "cost_basis", "realized_pnl", "last_mark",
    "last_mark_at", "opened_at",
)  # fmt: skip


@cache
def _reads(for_update_of: bool) -> tuple[str, str, str]:
    """The three locking reads of a fill, in lock order (C1): the account (with its tenant's
    day boundary), the order (with the duplicate check, the account's last fill time, its
    token's outcome and market), and the positions the fill needs (the order token's and the
    account's other open ones, for the equity snapshot). SQLite has no row locks."""
    account, tenant = Account._meta.db_table, Tenant._meta.db_table
    order, fill = Order._meta.db_table, Fill._meta.db_table
    token, market = Token._meta.db_table, Market._meta.db_table
    position = Position._meta.db_table

    def cols(names: tuple[str, ...], alias: str) -> str:
        return ", ".join(f"{alias}.{c}" for c in names)

    def lock(alias: str) -> str:
        return f"FOR UPDATE OF {alias}" if for_update_of else ""

    account_sql = f"""
        SELECT {cols(_ACCOUNT_READ, "a")}, t.day_boundary_tz, t.day_boundary_time
          FROM {account} a LEFT JOIN {tenant} t ON t.id = a.tenant_id
         WHERE a.id = %s {lock("a")}
    """
    order_sql = f"""
        SELECT {cols(_ORDER_READ, "o")},
               EXISTS (SELECT 1 FROM {fill} f WHERE f.trigger_key = %s),
               (SELECT f.filled_at FROM {fill} f
                 WHERE f.account_id = o.account_id
                   AND f.seq = (SELECT a.last_fill_seq FROM {account} a
                                 WHERE a.id = o.account_id)),
               tk.outcome, m.condition_id, m.question, m.closed, m.status, m.accepting_orders
          FROM {order} o
          LEFT JOIN {token} tk ON tk.token_id = o.token_id
          LEFT JOIN {market} m ON m.id = tk.market_id
         WHERE o.id = %s AND o.account_id = %s {lock("o")}
    """
    positions_sql = f"""
        SELECT {cols(_POSITION_READ, "p")} FROM {position} p
         WHERE p.account_id = %s
           AND p.epoch = (SELECT o.epoch FROM {order} o WHERE o.id = %s)
           AND (p.token_id = (SELECT o.token_id FROM {order} o WHERE o.id = %s)
                OR (p.status = %s AND p.size > 0))
         ORDER BY p.opened_at, p.id {lock("p")}
    """
    return account_sql, order_sql, positions_sql


_POSITION_INSERT = [
    "account_id", "epoch", "token_id", "market_id", "market_question", "outcome", "status",
    "size", "reserved_size", "avg_price", "cost_basis", "realized_pnl", "last_mark",
    "last_mark_at", "opened_at", "updated_at",
]  # fmt: skip
_POSITION_UPDATE = [
    "size", "reserved_size", "avg_price", "cost_basis", "realized_pnl", "updated_at",
]  # fmt: skip
_LEDGER_INSERT = [
    "account_id", "epoch", "kind", "amount", "balance_after", "order_id", "fill_id", "memo",
    "created_at",
]  # fmt: skip
_ORDER_UPDATE = [
    "status", "filled_size", "filled_notional", "reserved_cash", "reserved_shares",
    "queue_ahead", "queue_trigger", "updated_at",
]  # fmt: skip
_ORDER_QUEUE_UPDATE = ["queue_ahead", "queue_trigger"]
_SNAPSHOT_INSERT = ["account_id", "epoch", "at", "equity", "cash", "positions_value"]
_ACCOUNT_UPDATE = [
    "cash", "reserved_cash", "realized_pnl", "last_fill_seq", "trading_days",
    "last_trading_day", "high_water_mark", "max_drawdown", "max_drawdown_pct", "updated_at",
]  # fmt: skip


def _insert_sql(model: type[Any], columns: list[str]) -> str:
    marks = ", ".join(["%s"] * len(columns))
    return f"INSERT INTO {model._meta.db_table} ({', '.join(columns)}) VALUES ({marks})"


def _update_sql(model: type[Any], columns: list[str]) -> str:
    sets = ", ".join(f"{c} = %s" for c in columns)
    return f"UPDATE {model._meta.db_table} SET {sets} WHERE {model._meta.pk.column} = %s"


@cache
def _writes() -> dict[str, str]:
    """The writes of a fill; every value is a bound parameter."""
    return {
        "position_insert": _insert_sql(Position, _POSITION_INSERT),
        "position_update": _update_sql(Position, _POSITION_UPDATE),
        "ledger": _insert_sql(LedgerEntry, _LEDGER_INSERT),
        "fill": _insert_sql(Fill, _fill_columns()),
        "order": _update_sql(Order, _ORDER_UPDATE),
        "order_queue": _update_sql(Order, _ORDER_QUEUE_UPDATE),
        "snapshot": _insert_sql(EquitySnapshot, _SNAPSHOT_INSERT),
        "account": _update_sql(Account, _ACCOUNT_UPDATE),
    }


def _params(*values: Any) -> list[Any]:
    """Python values as this connection's driver takes them for the fixed SQL: PostgreSQL as
    they are; SQLite naive-UTC datetime text and UUID hex, as the ORM writes them."""
    if connection.vendor == "postgresql":
        return list(values)
    return [
        connection.ops.adapt_datetimefield_value(v)
        if isinstance(v, dt.datetime)
        else (v.hex if isinstance(v, uuid.UUID) else v)
        for v in values
    ]


def _locked(order_id: Any, account_id: Any, trigger_key: str) -> _Locked | MakerResult:
    """Account lock, then the order row lock, then the positions; `gone` unless the order
    (of that account) still rests and may trade (live, its epoch, an open market accepting
    orders, not past its GTD expiration); `duplicate` if `trigger_key` was already applied
    (read after the account lock: every fill of the account commits under it). One round
    trip on PostgreSQL."""
    account_sql, order_sql, positions_sql = _reads(connection.features.has_select_for_update_of)
    try:
        account_key = db_param_uuid(uuid.UUID(str(account_id)))
        order_key = db_param_uuid(uuid.UUID(str(order_id)))
    except ValueError:
        return MakerResult("gone", ZERO, ZERO, ZERO)
    accounts, orders, position_rows = fetch_statements(
        [
            (account_sql, [account_key]),
            (order_sql, [trigger_key, order_key, account_key]),
            (positions_sql, [account_key, order_key, order_key, Position.Status.OPEN]),
        ]
    )
    if not accounts or not orders:
        return MakerResult("gone", ZERO, ZERO, ZERO)
    account = model_from_row(Account, _ACCOUNT_READ, accounts[0][: len(_ACCOUNT_READ)])
    account.tenant_tz, account.tenant_time = accounts[0][-2:]  # type: ignore[attr-defined]
    order = model_from_row(Order, _ORDER_READ, orders[0][: len(_ORDER_READ)])
    duplicate, previous, outcome, market_id, question, closed, status, accepting = orders[0][-8:]
    if (
        order.status != Order.Status.LIVE
        or order.size is None
        or _remaining(order) <= 0
        or account.is_closed
        or order.epoch != account.epoch
        or (order.expiration is not None and order.expiration <= timezone.now())
    ):
        return MakerResult("gone", ZERO, ZERO, ZERO)
    if market_id is None or closed or status != market_states.OPEN or not accepting:
        return MakerResult("gone", ZERO, _remaining(order), order.queue_ahead)
    if duplicate:
        return MakerResult("duplicate", ZERO, _remaining(order), order.queue_ahead)
    return _Locked(
        account,
        order,
        outcome,
        market_id,
        question,
        db_datetime(previous),
        [model_from_row(Position, _POSITION_READ, row) for row in position_rows],
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
    fill_id = _apply(
        got,
        size=walk.filled,
        trigger_key=trigger_key,
        price_source="book",
        top=top,
        levels=[[str(t.price), str(t.size)] for t in walk.takes],
    )
    return MakerResult("filled", walk.filled, _remaining(order), order.queue_ahead, fill_id)


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
    elif not crosses(order.side, price, order.price):
        return MakerResult("none", ZERO, remaining, order.queue_ahead)
    take = take.quantize(Decimal("0.01"), rounding=ROUND_DOWN)
    if take <= 0:
        if at_price:  # the queue advance alone (a fill writes it with the order's update)
            queue = _params(order.queue_ahead, order.queue_trigger, order.pk)
            run_statements([(_writes()["order_queue"], queue)])
        return MakerResult("none", ZERO, remaining, order.queue_ahead)
    fill_id = _apply(
        got,
        size=take,
        trigger_key=trigger_key,
        price_source="trade",
        top=top,
        levels=[[trade.price, str(take)]],
        trade=trade,
    )
    return MakerResult("filled", take, _remaining(order), order.queue_ahead, fill_id)


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
) -> uuid.UUID:
    """Move the money of one maker fill and snapshot the account's equity, under the row
    locks `_locked` took; its writes in one round trip on PostgreSQL. Returns the fill's id.

    The rules are those of the shared helpers, applied here in memory and written with the
    fill's own statements: `ledger_post` (a TRADE entry; never below zero available cash),
    `fills_append` (the account's next `seq`; `filled_at` never before its last fill's),
    `position_apply`, `equity_snapshot_record` (high-water mark, max drawdown)."""
    account, order = locked.account, locked.order
    now = timezone.now()
    price = order.price
    notional = price * size
    positions = locked.positions
    position = next((p for p in positions if p.token_id == order.token_id), None)
    created = position is None
    if position is None:
        if order.side == Side.SELL:  # a live SELL always has its reserved position
            raise IntegrityError(f"live SELL {order.pk} has no position")
        position = Position(
            account_id=account.pk,
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

    # The ledger's TRADE entry (ledger_post's rule: available cash never below zero).
    amount = cash(-notional if order.side == Side.BUY else notional)
    balance = account.cash + amount
    if balance < account.reserved_cash:
        raise errors.ValidationFailed(
            "cash movement would leave negative available cash",
            details={"amount": [str(amount)], "available": [str(account.available_cash)]},
        )
    account.cash = balance

    # The fill, numbered after the account's last one (fills_append's rules).
    fill_id = uuid.uuid4()
    previous = locked.previous_filled_at
    filled_at = previous if previous is not None and now < previous else now
    account.last_fill_seq += 1
    mid = top.mid_value() if top is not None else None
    mid_gap = None
    if mid is not None:
        gap = price - mid if order.side == Side.BUY else mid - price
        mid_gap = gap.quantize(PRICE_Q, rounding=ROUND_HALF_EVEN)
    as_of_ms = (
        trade.timestamp_ms if trade is not None else (top.timestamp_ms if top is not None else None)
    )
    fill = {
        "id": fill_id,
        "account_id": account.pk,
        "seq": account.last_fill_seq,
        "epoch": order.epoch,
        "kind": Fill.Kind.FILL,
        "order_id": order.pk,
        "token_id": order.token_id,
        "market_id": order.market_id,
        "market_question": locked.question,
        "outcome": locked.outcome,
        "side": order.side,
        "price": price,
        "size": size,
        "notional": notional,
        "fee": ZERO,
        "fee_rate_bps": ZERO,
        "liquidity": Fill.Liquidity.MAKER,
        "realized_pnl": realized,
        "price_source": price_source,
        "book_as_of": dt.datetime.fromtimestamp(as_of_ms / 1000, dt.UTC) if as_of_ms else None,
        "book_hash": top.hash if top is not None and price_source == "book" else "",
        "levels": Fill._meta.get_field("levels").get_db_prep_save(levels, connection),
        "vwap": price,
        "mid_gap": mid_gap,
        "trigger_key": trigger_key,
        "filled_at": filled_at,
    }

    account.realized_pnl += realized
    day = _trading_day(account, now)
    if account.last_trading_day != day:
        account.trading_days += 1
        account.last_trading_day = day
    # The equity snapshot (equity_snapshot_record's rules).
    # A mark's price does not depend on whether its book is live (only its label does), so
    # the tops are read with one MGET, without the feed heartbeats `latest_many_live` adds.
    rows = open_position_rows(positions)
    marked_value = positions_value(
        rows, get_bus().latest_many([r.token_id for r in rows]) if rows else {}
    )
    equity = account.cash + marked_value
    hwm = max(account.high_water_mark, equity)
    drawdown = hwm - equity
    account.high_water_mark = hwm
    if drawdown > account.max_drawdown:
        account.max_drawdown = drawdown
        account.max_drawdown_pct = pct(drawdown, hwm)

    sql = _writes()
    p = position
    run_statements(
        [
            (
                (sql["position_insert"], _params(
                    account.pk, p.epoch, p.token_id, p.market_id, p.market_question, p.outcome,
                    p.status, p.size, p.reserved_size, p.avg_price, p.cost_basis,
                    p.realized_pnl, p.last_mark, p.last_mark_at, p.opened_at, now,
                ))
                if created
                else (sql["position_update"], _params(
                    p.size, p.reserved_size, p.avg_price, p.cost_basis, p.realized_pnl, now,
                    p.pk,
                ))
            ),
            (sql["ledger"], _params(
                account.pk, account.epoch, LedgerEntry.Kind.TRADE, amount, balance, order.pk,
                fill_id, f"{order.side} {size} @ {price} (maker)", now,
            )),
            (sql["fill"], _params(*(fill[c] for c in _fill_columns()))),
            (sql["order"], _params(
                order.status, order.filled_size, order.filled_notional, order.reserved_cash,
                order.reserved_shares, order.queue_ahead, order.queue_trigger, now, order.pk,
            )),
            (sql["snapshot"], _params(
                account.pk, account.epoch, now, equity, account.cash, marked_value,
            )),
            (sql["account"], _params(
                account.cash, account.reserved_cash, account.realized_pnl,
                account.last_fill_seq, account.trading_days, account.last_trading_day,
                account.high_water_mark, account.max_drawdown, account.max_drawdown_pct, now,
                account.pk,
            )),
        ]
    )  # fmt: skip
    return fill_id


def _trading_day(account: Account, now: dt.datetime) -> dt.date:
    """The account's trading day now; the tenant's boundary came with the account row."""
    if account.tenant_id is None:
        return trading_day(now, "UTC", dt.time(0, 0))
    at = account.tenant_time  # type: ignore[attr-defined]
    boundary = at if isinstance(at, dt.time) else parse_time(str(at))
    assert boundary is not None
    return trading_day(now, account.tenant_tz, boundary)  # type: ignore[attr-defined]
