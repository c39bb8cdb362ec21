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
and its client CPU is what a matcher spends per fill, so it is fixed SQL in two round trips
on PostgreSQL besides BEGIN and COMMIT, and one Redis command. The locking reads, in lock
order, as one multi-statement query: the account row (with its tenant's day boundary), the
order row (with the duplicate check, the order's market and the account's last fill time),
and every position the fill needs (the filled one and the account's other open ones, which
the equity snapshot values: only the columns it uses). The rows are plain values, not model
instances. Then the depletion takes and the positions' marks: one Redis command sets the
takes (compare-and-set) and reads the marks' tops. The writes: the position, the ledger's
TRADE entry, the fill, the order, the equity snapshot, and the account row once (cash,
reservations, P&L, fill numbering, high-water mark together) — on PostgreSQL ONE statement
bound by the server (data-modifying WITH queries), elsewhere one statement each. The rules
of the shared helpers that would write through the ORM (`ledger_post`, `fills_append`,
`equity_snapshot_record`) are applied here in memory.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from functools import cache
from typing import Any

import orjson
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone
from django.utils.dateparse import parse_time

from accounts.models import Account, EquitySnapshot, LedgerEntry, Position
from core import errors
from core.clock import trading_day
from core.db import db_datetime, retry_on_conflict
from core.money import CASH_QUANTUM, ZERO, cash, pct
from core.sqlrows import fetch_statements, run_bound, run_statements
from marketdata import states as market_states
from marketdata.bus import BookTop, RedisBus, TradePrint, get_bus
from marketdata.models import Market, Token
from partners.models import Tenant
from trading import states
from trading.depletion import (
    RedisDepletion,
    Take,
    get_depletion_store,
    level_keys,
    memories_of,
)
from trading.fillmodel import crosses, walk_book
from trading.models import Fill, Order, Side
from trading.selectors import mark_of
from trading.services.fills import position_apply

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


# --- the rows a fill works on -------------------------------------------------------------------
# Plain values read under the row locks, not model instances: building an instance (every
# field of the model initialised, deferred or not) costs several times converting the row.
@dataclass(slots=True)
class _AccountRow:
    """The account columns a fill reads (`_ACCOUNT_READ`, in order) and its tenant's day
    boundary; the fill changes them in memory and writes them back once."""

    id: uuid.UUID
    tenant_id: Any
    status: str
    epoch: int
    cash: Decimal
    reserved_cash: Decimal
    realized_pnl: Decimal
    high_water_mark: Decimal
    max_drawdown: Decimal
    max_drawdown_pct: Decimal
    trading_days: int
    last_trading_day: dt.date | None
    last_fill_seq: int
    tenant_tz: str | None
    tenant_time: dt.time | None


@dataclass(slots=True)
class _OrderRow:
    """The order columns a fill reads (`_ORDER_READ`, in order)."""

    id: uuid.UUID
    account_id: uuid.UUID
    epoch: int
    token_id: str
    market_id: str
    side: str
    price: Decimal
    size: Decimal | None
    expiration: dt.datetime | None
    status: str
    filled_size: Decimal
    filled_notional: Decimal
    reserved_cash: Decimal
    reserved_shares: Decimal
    queue_ahead: Decimal
    queue_trigger: str


@dataclass(slots=True)
class _Holding:
    """The position the fill changes (`position_apply`): its row (`_POSITION_READ`), or a new
    one (`id` None) inserted by the fill."""

    id: Any
    token_id: str
    status: str = Position.Status.OPEN
    size: Decimal = ZERO
    reserved_size: Decimal = ZERO
    avg_price: Decimal = ZERO
    cost_basis: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    last_mark: Decimal | None = None


def _remaining(order: _OrderRow) -> Decimal:
    assert order.size is not None
    return order.size - order.filled_size


@dataclass(frozen=True)
class _Locked:
    """What a maker fill works on, read under the account, order and position row locks."""

    db: BaseDatabaseWrapper  # this thread's connection, in the fill's transaction
    account: _AccountRow
    order: _OrderRow
    outcome: str  # the order token's outcome label
    market_id: str
    question: str
    previous_filled_at: dt.datetime | None  # the account's last fill's (fills_append)
    position: _Holding | None  # the order token's, if the account holds one
    others: list[_Holding]  # the account's other open positions with shares (their value)


# --- fixed SQL ---------------------------------------------------------------------------------
# A fill is a handful of rows; building and compiling them with the ORM (RawQuerySet column
# resolution, model saves, bulk_create) cost several times the database's own work. So the
# reads and writes are fixed, parameterised SQL; only model table and column names are
# interpolated. The statements of one phase go in ONE round trip (core/sqlrows.py).


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
# Positions: what `position_apply` changes and what the equity snapshot values (no labels, no
# times: those are only written, for a new position, from the order's market).
_POSITION_READ = (
    "id", "token_id", "status", "size", "reserved_size", "avg_price", "cost_basis",
    "realized_pnl", "last_mark",
)  # fmt: skip


@cache
def _reads() -> tuple[str, str, str]:
    """The three locking reads of a fill, in lock order (C1): the account (with its tenant's
    day boundary), the order (with the duplicate check, the account's last fill time, its
    token's outcome and market), and the positions the fill needs (the order token's and the
    account's other open ones, for the equity snapshot)."""
    account, tenant = Account._meta.db_table, Tenant._meta.db_table
    order, fill = Order._meta.db_table, Fill._meta.db_table
    token, market = Token._meta.db_table, Market._meta.db_table
    position = Position._meta.db_table

    def cols(names: tuple[str, ...], alias: str) -> str:
        return ", ".join(f"{alias}.{c}" for c in names)

    def lock(alias: str) -> str:
        return f"FOR UPDATE OF {alias}"

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


@dataclass(frozen=True)
class _Const:
    """A value written into the SQL text: one of our own constants (a choice's value),
    never input."""

    value: str

    def sql(self) -> str:
        if not self.value.replace("_", "").isalnum():
            raise ValueError(f"not a plain constant: {self.value!r}")
        return f"'{self.value}'"


# The writes of a fill: (model, [(column, value)], the value of the primary key to update or
# None to insert). A value is the name of an entry of the fill's values (`_apply`), a
# `_Const`, or None (NULL).
_Write = tuple[type[Any], tuple[tuple[str, "str | _Const | None"], ...], str | None]
_POSITION_INSERT: _Write = (Position, (
    ("account_id", "account"), ("epoch", "epoch"), ("token_id", "token"),
    ("market_id", "market"), ("market_question", "question"), ("outcome", "outcome"),
    ("status", _Const(Position.Status.OPEN)), ("size", "p_size"),
    ("reserved_size", "p_reserved"), ("avg_price", "p_avg"), ("cost_basis", "p_cost"),
    ("realized_pnl", "p_realized"), ("last_mark", None), ("last_mark_at", None),
    ("opened_at", "now"), ("updated_at", "now"),
), None)  # fmt: skip
_POSITION_UPDATE: _Write = (Position, (
    ("size", "p_size"), ("reserved_size", "p_reserved"), ("avg_price", "p_avg"),
    ("cost_basis", "p_cost"), ("realized_pnl", "p_realized"), ("updated_at", "now"),
), "p_id")  # fmt: skip
_LEDGER_INSERT: _Write = (LedgerEntry, (
    ("account_id", "account"), ("epoch", "epoch"), ("kind", _Const(LedgerEntry.Kind.TRADE)),
    ("amount", "amount"), ("balance_after", "cash"), ("order_id", "order"),
    ("fill_id", "fill"), ("memo", "memo"), ("created_at", "now"),
), None)  # fmt: skip
_FILL_INSERT: _Write = (Fill, (
    ("id", "fill"), ("account_id", "account"), ("seq", "seq"), ("epoch", "epoch"),
    ("kind", _Const(Fill.Kind.FILL)), ("order_id", "order"), ("token_id", "token"),
    ("market_id", "order_market"), ("market_question", "question"), ("outcome", "outcome"),
    ("side", "side"), ("price", "price"), ("size", "size"), ("notional", "notional"),
    ("fee", _Const("0")), ("fee_rate_bps", _Const("0")),
    ("liquidity", _Const(Fill.Liquidity.MAKER)), ("realized_pnl", "realized"),
    ("price_source", "price_source"), ("book_as_of", "book_as_of"),
    ("book_hash", "book_hash"), ("levels", "levels"), ("vwap", "price"),
    ("mid_gap", "mid_gap"), ("trigger_key", "trigger"), ("filled_at", "filled_at"),
), None)  # fmt: skip
_ORDER_UPDATE: _Write = (Order, (
    ("status", "o_status"), ("filled_size", "o_filled_size"),
    ("filled_notional", "o_filled_notional"), ("reserved_cash", "o_reserved_cash"),
    ("reserved_shares", "o_reserved_shares"), ("queue_ahead", "o_queue_ahead"),
    ("queue_trigger", "o_queue_trigger"), ("updated_at", "now"),
), "order")  # fmt: skip
_ORDER_QUEUE_UPDATE: _Write = (Order, (
    ("queue_ahead", "o_queue_ahead"), ("queue_trigger", "o_queue_trigger"),
), "order")  # fmt: skip
_SNAPSHOT_INSERT: _Write = (EquitySnapshot, (
    ("account_id", "account"), ("epoch", "epoch"), ("at", "now"), ("equity", "equity"),
    ("cash", "cash"), ("positions_value", "positions_value"),
), None)  # fmt: skip
_ACCOUNT_UPDATE: _Write = (Account, (
    ("cash", "cash"), ("reserved_cash", "a_reserved"), ("realized_pnl", "a_realized"),
    ("last_fill_seq", "seq"), ("trading_days", "trading_days"),
    ("last_trading_day", "last_trading_day"), ("high_water_mark", "hwm"),
    ("max_drawdown", "max_dd"), ("max_drawdown_pct", "max_dd_pct"), ("updated_at", "now"),
), "account")  # fmt: skip


@cache
def _write_sql(write: _Write, named: bool) -> tuple[str, tuple[str, ...]]:
    """One write as SQL, and the names of its values in placeholder order. `named`:
    `%(name)s` placeholders (PostgreSQL binds each name once however often it appears);
    else `%s`."""
    model, pairs, key = write
    if model is Fill and {c for c, _ in pairs} != set(_fill_columns()):
        raise AssertionError("_FILL_INSERT must write every column of Fill")
    names: list[str] = []

    def mark(value: str | _Const | None) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, _Const):
            return value.sql()
        names.append(value)
        return f"%({value})s" if named else "%s"

    table = model._meta.db_table
    if key is None:
        columns = ", ".join(c for c, _ in pairs)
        sql = f"INSERT INTO {table} ({columns}) VALUES ({', '.join(mark(v) for _, v in pairs)})"
    else:
        sets = ", ".join(f"{c} = {mark(v)}" for c, v in pairs)
        sql = f"UPDATE {table} SET {sets} WHERE {model._meta.pk.column} = {mark(key)}"
    return sql, tuple(names)


@cache
def _fill_writes(created: bool) -> str:
    """Every write of a fill as ONE statement (data-modifying WITH queries: each
    runs exactly once, all in this statement; they touch different rows, and the rows the
    fill updates are already locked), with named values, bound by the server."""
    first = _POSITION_INSERT if created else _POSITION_UPDATE
    writes = [first, _LEDGER_INSERT, _FILL_INSERT, _ORDER_UPDATE, _SNAPSHOT_INSERT]
    ctes = ", ".join(f"w{i} AS ({_write_sql(w, True)[0]})" for i, w in enumerate(writes))
    return f"WITH {ctes} {_write_sql(_ACCOUNT_UPDATE, True)[0]}"


def _locked(order_id: Any, account_id: Any, trigger_key: str) -> _Locked | MakerResult:
    """Account lock, then the order row lock, then the positions; `gone` unless the order
    (of that account) still rests and may trade (live, its epoch, an open market accepting
    orders, not past its GTD expiration); `duplicate` if `trigger_key` was already applied
    (read after the account lock: every fill of the account commits under it). One round
    trip."""
    db = connections[DEFAULT_DB_ALIAS]  # itself: each read through the proxy is a lookup
    account_sql, order_sql, positions_sql = _reads()
    try:
        account_key: Any = uuid.UUID(str(account_id))
        order_key: Any = uuid.UUID(str(order_id))
    except ValueError:
        return MakerResult("gone", ZERO, ZERO, ZERO)
    # Three short reads with eight values: one text merged in one pass (psycopg keeps it parsed).
    accounts, orders, position_rows = fetch_statements(
        [
            (account_sql, [account_key]),
            (order_sql, [trigger_key, order_key, account_key]),
            (positions_sql, [account_key, order_key, order_key, Position.Status.OPEN]),
        ],
        joined=True,
        db=db,
    )
    if not accounts or not orders:
        return MakerResult("gone", ZERO, ZERO, ZERO)
    # psycopg returns the columns a fill reads (numeric, text, integer, uuid, timestamptz,
    # date) as the ORM would load them: no conversion.
    account = _AccountRow(*accounts[0])
    order = _OrderRow(*orders[0][: len(_ORDER_READ)])
    duplicate, previous, outcome, market_id, question, closed, status, accepting = orders[0][-8:]
    if (
        order.status != Order.Status.LIVE
        or order.size is None
        or _remaining(order) <= 0
        or account.status == Account.Status.CLOSED
        or order.epoch != account.epoch
        or (order.expiration is not None and order.expiration <= timezone.now())
    ):
        return MakerResult("gone", ZERO, ZERO, ZERO)
    if market_id is None or closed or status != market_states.OPEN or not accepting:
        return MakerResult("gone", ZERO, _remaining(order), order.queue_ahead)
    if duplicate:
        return MakerResult("duplicate", ZERO, _remaining(order), order.queue_ahead)
    position, others = None, []
    for row in position_rows:
        held = _Holding(*row)
        if held.token_id == order.token_id:
            position = held
        else:  # the query returns other positions only when open with shares
            others.append(held)
    return _Locked(
        db, account, order, outcome, market_id, question, db_datetime(previous), position, others
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
    keys = level_keys(top, book_side, len(crossing))
    published = [s for _, s in crossing]
    # The first walk assumes that no crossing level has a depletion record (the common case:
    # simulated takers seldom took from exactly these levels in these versions) and its
    # compare-and-set checks it, in one round trip with the marks' read. A record there
    # fails the set, and the levels are read and walked again.
    raws = [""] * len(keys)
    marks: dict[str, _TopMark] | None = None
    marks_read = False
    for attempt in range(DEPLETION_ATTEMPTS):
        if attempt:
            raws = store.read(keys)
        mems = memories_of(raws, published)
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
        if marks_read:
            ok = store.commit(takes)
        else:
            ok, marks = _commit_with_marks(store, takes, _valued_tokens(got))
            marks_read = True
        if ok:
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
        marks=marks,
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
            sql, _ = _write_sql(_ORDER_QUEUE_UPDATE, False)
            run_statements([(sql, [order.queue_ahead, order.queue_trigger, order.id])])
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


def _valued_tokens(locked: _Locked) -> list[str]:
    """The tokens whose marks the fill's equity snapshot may need: the order's (its position
    after the fill) and the account's other open positions'."""
    return [locked.order.token_id, *(h.token_id for h in locked.others)]


# What a position's mark needs of its token's top (`trading.selectors.mark_of`): the best bid,
# the best ask and the last trade price.
_TopMark = tuple[str | None, str | None, str | None]


def _commit_with_marks(
    store: RedisDepletion, takes: list[Take], tokens: list[str]
) -> tuple[bool, dict[str, _TopMark] | None]:
    """`store.commit(takes)` and, as the depletion memory and the price bus share one Redis
    (settings.REDIS_URL), the latest tops of `tokens` read in the same command. None for the
    marks only while the bus is not the Redis one (the fill then reads them when it values
    the positions). A top's JSON is the BookTop's fields: only the mark's are taken from it."""
    bus = get_bus()
    if not isinstance(bus, RedisBus):
        return store.commit(takes), None
    ids = list(dict.fromkeys(tokens))
    ok, blobs = store.commit_and_get(takes, [bus.book_key(t) for t in ids])
    marks = {}
    for token, blob in zip(ids, blobs, strict=True):
        if blob is not None:
            top = orjson.loads(blob)
            marks[token] = (top.get("best_bid"), top.get("best_ask"), top.get("last_trade_price"))
    return ok, marks


def _positions_value(held: list[_Holding], marks: Mapping[str, _TopMark]) -> Decimal:
    """The market value of these open positions with shares, exactly as
    `trading.selectors.open_positions` values them (`position_mark`: the book's mark, else
    the stored one, else cost; `MarkedPosition.market_value`: size × mark price in cash)."""
    total = ZERO
    for h in held:
        top = marks.get(h.token_id)
        priced = mark_of(*top) if top is not None else None
        if priced is not None:
            price = priced[0]
        else:
            price = h.last_mark if h.last_mark is not None else h.avg_price
        total += cash(h.size * price)
    return total


def _release_buy(order: _OrderRow, size: Decimal) -> Decimal:
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
    marks: Mapping[str, _TopMark] | None = None,
) -> uuid.UUID:
    """Move the money of one maker fill and snapshot the account's equity, under the row
    locks `_locked` took; its writes in one round trip on PostgreSQL. Returns the fill's id.
    `marks`: the marks' fields of the latest tops of `_valued_tokens` if the caller read them
    already (else read here, one round trip).

    The rules are those of the shared helpers, applied here in memory and written with the
    fill's own statements: `ledger_post` (a TRADE entry; never below zero available cash),
    `fills_append` (the account's next `seq`; `filled_at` never before its last fill's),
    `position_apply`, `equity_snapshot_record` (high-water mark, max drawdown)."""
    account, order = locked.account, locked.order
    now = timezone.now()
    price = order.price
    notional = price * size
    position = locked.position
    created = position is None
    if position is None:
        if order.side == Side.SELL:  # a live SELL always has its reserved position
            raise IntegrityError(f"live SELL {order.id} has no position")
        position = _Holding(None, order.token_id)
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
            details={
                "amount": [str(amount)],
                "available": [str(account.cash - account.reserved_cash)],
            },
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
    book_as_of = dt.datetime.fromtimestamp(as_of_ms / 1000, dt.UTC) if as_of_ms else None

    account.realized_pnl += realized
    day = _trading_day(account, now)
    if account.last_trading_day != day:
        account.trading_days += 1
        account.last_trading_day = day
    # The equity snapshot (equity_snapshot_record's rules): the open positions with shares,
    # valued as `trading.selectors.open_positions` values them. A mark's price does not
    # depend on whether its book is live (only its label does), so the tops are read with
    # one MGET, without the feed heartbeats `latest_many_live` adds.
    valued = position.status == Position.Status.OPEN and position.size > 0
    held = [position, *locked.others] if valued else locked.others
    if marks is None:
        tops = get_bus().latest_many([h.token_id for h in held]) if held else {}
        marks = {t: (top.best_bid, top.best_ask, top.last_trade_price) for t, top in tops.items()}
    marked_value = _positions_value(held, marks)
    equity = account.cash + marked_value
    hwm = max(account.high_water_mark, equity)
    drawdown = hwm - equity
    account.high_water_mark = hwm
    if drawdown > account.max_drawdown:
        account.max_drawdown = drawdown
        account.max_drawdown_pct = pct(drawdown, hwm)

    # Every value of the writes, by name (see the `_Write`s).
    values = {
        "account": account.id,
        "epoch": order.epoch,  # the account's: `_locked` checked they are the same
        "now": now,
        "token": order.token_id,
        "market": locked.market_id,
        "question": locked.question,
        "outcome": locked.outcome,
        "p_id": position.id,
        "p_size": position.size,
        "p_reserved": position.reserved_size,
        "p_avg": position.avg_price,
        "p_cost": position.cost_basis,
        "p_realized": position.realized_pnl,
        "amount": amount,
        "cash": account.cash,  # the ledger entry's balance_after and the snapshot's cash
        "order": order.id,
        "fill": fill_id,
        "memo": f"{order.side} {size} @ {price} (maker)",
        "seq": account.last_fill_seq,
        "order_market": order.market_id,
        "side": order.side,
        "price": price,
        "size": size,
        "notional": notional,
        "realized": realized,
        "price_source": price_source,
        "book_as_of": book_as_of,
        "book_hash": top.hash if top is not None and price_source == "book" else "",
        "levels": json.dumps(levels),  # as the JSONField writes it
        "mid_gap": mid_gap,
        "trigger": trigger_key,
        "filled_at": filled_at,
        "o_status": order.status,
        "o_filled_size": order.filled_size,
        "o_filled_notional": order.filled_notional,
        "o_reserved_cash": order.reserved_cash,
        "o_reserved_shares": order.reserved_shares,
        "o_queue_ahead": order.queue_ahead,
        "o_queue_trigger": order.queue_trigger,
        "equity": equity,
        "positions_value": marked_value,
        "a_reserved": account.reserved_cash,
        "a_realized": account.realized_pnl,
        "trading_days": account.trading_days,
        "last_trading_day": account.last_trading_day,
        "hwm": account.high_water_mark,
        "max_dd": account.max_drawdown,
        "max_dd_pct": account.max_drawdown_pct,
    }
    run_bound(locked.db, _fill_writes(created), values)
    return fill_id


def _trading_day(account: _AccountRow, now: dt.datetime) -> dt.date:
    """The account's trading day now; the tenant's boundary came with the account row."""
    if account.tenant_id is None or account.tenant_tz is None:
        return trading_day(now, "UTC", dt.time(0, 0))
    at = account.tenant_time
    boundary = at if isinstance(at, dt.time) else parse_time(str(at))
    assert boundary is not None
    return trading_day(now, account.tenant_tz, boundary)
