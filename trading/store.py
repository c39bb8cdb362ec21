"""The data-access module of the engine: the hot SQL, for PostgreSQL only, in one place.

* The locking reads, each in ONE round trip: the account row (with its tenant's state and
  trading-day boundary and its last fill's time), then — locked, in the order every path
  takes them (account, orders, positions) — the orders and positions an event needs, and the
  unlocked reads beside them (the token with its market, a client_order_id twin, a trigger
  already applied).
* The one writer, `write(effects)`: what trading.engine computed — new and changed orders
  and positions, fills, ledger entries, the equity snapshot, the account row — in ONE round
  trip.

Both send their statements as ONE simple query through Django's cursor: each statement merged
with its values by psycopg's own client-side binding (`mogrify`, as Django's default cursor
sends every query; no quoting of ours), the list run by PostgreSQL in order inside the
caller's transaction. Measured against psycopg's pipeline mode with server-side binding (one
round trip too): the matcher spent 267 against 325 µs of CPU per book update at 5 % crossing
and its fills' p50 was 24 against 66 ms (bench/engine_matching.py, 10,000 resting orders,
one run each, same machine, 2026-12-08). Only model table and column
names and our own constants are put into the SQL text. Everything else in the project uses
the ORM; this module exists because a fill runs on the matcher's critical path and building
these statements with the ORM cost several times the database's own work.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import cache
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone
from psycopg.types.json import Jsonb

from accounts.models import Account, EquitySnapshot, LedgerEntry, Position
from marketdata.models import Market, Token
from trading.engine import (
    AccountState,
    Effects,
    FillRow,
    OrderState,
    PositionState,
    day_boundary_of,
)
from trading.models import Fill, Order

Tenant: Any = Account._meta.get_field("tenant").related_model


# --- running statements -------------------------------------------------------------------------
def _db() -> BaseDatabaseWrapper:
    return connections[DEFAULT_DB_ALIAS]


def _send(
    db: BaseDatabaseWrapper, statements: Sequence[tuple[str, Sequence[Any]]], *, fetch: bool
) -> list[list[Any]]:
    """Run `statements` in order in ONE round trip, through Django's cursor (its connection
    handling, errors and query logging): each is merged with its values by psycopg's own
    client-side binding (`mogrify`, what Django's default cursor sends for every query), and
    the `;`-separated list goes as one simple query, which PostgreSQL runs in order inside the
    caller's transaction (the first error aborts it). With `fetch`, the rows of each."""
    with db.cursor() as cursor:
        mogrify = cursor.cursor.mogrify
        with db.wrap_database_errors:
            text = ";\n".join(mogrify(sql, params) for sql, params in statements)
        cursor.execute(text)
        if not fetch:
            return []
        out = [cursor.fetchall()]
        while cursor.nextset():
            out.append(cursor.fetchall())
    if len(out) != len(statements):
        raise AssertionError(f"{len(out)} results for {len(statements)} statements")
    return out


def _fetch(
    db: BaseDatabaseWrapper, statements: Sequence[tuple[str, Sequence[Any]]]
) -> list[list[Any]]:
    """The rows of each SELECT, all sent in one round trip, in order."""
    return _send(db, statements, fetch=True)


def _fetch_one(sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
    with _db().cursor() as cursor:
        cursor.execute(sql, params)
        row: tuple[Any, ...] | None = cursor.fetchone()
    return row


# --- columns ------------------------------------------------------------------------------------
def _cols(model: Any, names: Sequence[str], alias: str) -> str:
    return ", ".join(f"{alias}.{model._meta.get_field(n).column}" for n in names)


# Each read's columns are the fields of the state it fills, in their order.
_ACCOUNT_READ = tuple(
    f.name for f in fields(AccountState) if f.name not in ("last_filled_at", "day_boundary")
)
_ACCOUNT_WRITE = _ACCOUNT_READ[3:]  # every column the engine moves
_POSITION_READ = tuple(f.name for f in fields(PositionState))  # the model's names
_POSITION_WRITE = (
    "status", "size", "reserved_size", "avg_price", "cost_basis", "realized_pnl",
)  # fmt: skip
_ORDER_STATE = tuple(f.name for f in fields(OrderState) if f.name != "new")
_ORDER_READ = tuple(n if n != "account_id" else "account" for n in _ORDER_STATE)
_ORDER_WRITE = (
    "status", "reason", "filled_size", "filled_notional", "fees_paid", "reserved_cash",
    "reserved_shares", "queue_ahead", "queue_trigger",
)  # fmt: skip
_FILL_ROW = tuple(f.name for f in fields(FillRow))


@dataclass(frozen=True, slots=True)
class MarketInfo:
    """A token with what trading needs of its market."""

    token_id: str
    outcome: str
    condition_id: str
    question: str
    tick_size: Any
    min_order_size: Any
    closed: bool
    status: str
    accepting_orders: bool
    fees_enabled: bool
    fee_rate: Any
    fee_exponent: Any


_MARKET_READ = tuple(f.name for f in fields(MarketInfo))[2:]  # after the token's two


@dataclass
class Locked:
    """What one event works on, read under the account row lock. `account` None: no such
    account (or not the owner's); the other fields are then empty."""

    account: AccountState | None
    tenant_id: Any = None
    tenant_enabled: bool = True
    positions: dict[str, PositionState] | None = None  # by token
    orders: list[OrderState] | None = None
    market: MarketInfo | None = None  # the token's (placement) or the order's (maker)
    replay_of: Any = None  # the order carrying the request's client_order_id
    duplicate: bool = False  # the trigger was applied already

    def position(self, token_id: str) -> PositionState | None:
        return (self.positions or {}).get(token_id)

    def others(self, token_id: str) -> list[PositionState]:
        return [p for t, p in (self.positions or {}).items() if t != token_id and p.valued]


@cache
def _account_sql(owned: bool) -> str:
    account_t, tenant_t, fill_t = Account._meta.db_table, Tenant._meta.db_table, Fill._meta.db_table
    owner = "AND a.owner_id = %s" if owned else ""
    return f"""
        SELECT {_cols(Account, _ACCOUNT_READ, "a")},
               (SELECT f.filled_at FROM {fill_t} f
                 WHERE f.account_id = a.id AND f.seq = a.last_fill_seq),
               a.tenant_id, t.enabled, t.day_boundary_tz, t.day_boundary_time
          FROM {account_t} a LEFT JOIN {tenant_t} t ON t.id = a.tenant_id
         WHERE a.id = %s {owner} FOR UPDATE OF a
    """


@cache
def _positions_sql(scope: str) -> str:
    """The account's positions of its epoch, locked: `token` the one of a token whatever
    its state and the other open ones with shares; `order` the same for an order's token;
    `tokens` those of a list of tokens and the other open ones with shares; `reserved` the
    ones live SELLs reserve shares of and the other open ones with shares."""
    position_t, account_t, order_t = (
        Position._meta.db_table,
        Account._meta.db_table,
        Order._meta.db_table,
    )
    mine = {
        "token": "p.token_id = %s",
        "order": f"p.token_id = (SELECT o.token_id FROM {order_t} o WHERE o.id = %s)",
        "tokens": "p.token_id = ANY(%s)",
        "reserved": "p.reserved_size > 0",
    }[scope]
    return f"""
        SELECT {_cols(Position, _POSITION_READ, "p")}
          FROM {position_t} p JOIN {account_t} a ON a.id = p.account_id
         WHERE p.account_id = %s AND p.epoch = a.epoch
           AND ({mine} OR (p.status = 'open' AND p.size > 0))
         ORDER BY p.opened_at, p.id FOR UPDATE OF p
    """


@cache
def _orders_sql(scope: str) -> str:
    """The account's orders, locked: `one` by id; `live` all live ones; `market` the live
    ones of a market; `expired` the live GTD ones expired at a time."""
    order_t = Order._meta.db_table
    where = {
        "one": "o.id = %s",
        "live": "o.status = 'live'",
        "market": "o.status = 'live' AND o.market_id = %s",
        "expired": "o.status = 'live' AND o.time_in_force = 'GTD' AND o.expiration <= %s",
    }[scope]
    return f"""
        SELECT {_cols(Order, _ORDER_READ, "o")} FROM {order_t} o
         WHERE o.account_id = %s AND {where} ORDER BY o.id FOR UPDATE OF o
    """


@cache
def _market_sql(by_order: bool) -> str:
    token_t, market_t, order_t = Token._meta.db_table, Market._meta.db_table, Order._meta.db_table
    key = (
        f"t.token_id = (SELECT o.token_id FROM {order_t} o WHERE o.id = %s)"
        if by_order
        else "t.token_id = %s"
    )
    return f"""
        SELECT t.token_id, t.outcome, {_cols(Market, _MARKET_READ, "m")}
          FROM {token_t} t JOIN {market_t} m ON m.id = t.market_id WHERE {key}
    """


def _replay_sql() -> str:
    return (
        f"SELECT o.id FROM {Order._meta.db_table} o "
        "WHERE o.account_id = %s AND o.client_order_id = %s"
    )


def _trigger_sql() -> str:
    return f"SELECT EXISTS (SELECT 1 FROM {Fill._meta.db_table} f WHERE f.trigger_key = %s)"


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        return None


def lock(
    account_id: Any,
    *,
    owner_id: Any = None,
    token_id: str | None = None,
    order_id: Any = None,
    orders: str | None = None,
    orders_arg: Any = None,
    tokens: Sequence[str] | None = None,
    positions: bool = False,
    market: bool = False,
    client_order_id: str | None = None,
    trigger_key: str | None = None,
) -> Locked:
    """Lock the account row and read what an event needs, in ONE round trip:
    * the account (only if `owner_id` owns it, when given), with its tenant's state;
    * locked orders: `order_id` (that one), or `orders` = "live" | "market" | "expired" with
      `orders_arg` (the market's condition id, or the expiry time);
    * locked positions of the account's epoch: those of `token_id`, of `order_id`'s token or
      of `tokens` (or, with `positions`, those with reserved shares), and every other open
      one with shares (what the equity snapshot values);
    * `token_id`'s token with its market (with `market`, `order_id`'s); the order of the
      account with `client_order_id`; whether `trigger_key` was applied already.
    A malformed account id reads as no account."""
    key = _uuid(account_id)
    if key is None:
        return Locked(None)
    db = _db()
    owned = owner_id is not None
    statements: list[tuple[str, Sequence[Any]]] = [
        (_account_sql(owned), [key, owner_id] if owned else [key])
    ]
    order_key = _uuid(order_id) if order_id is not None else None
    if order_id is not None and order_key is None:
        return Locked(None)
    if order_key is not None:
        statements.append((_orders_sql("one"), [key, order_key]))
    elif orders is not None:
        statements.append((_orders_sql(orders), [key] if orders_arg is None else [key, orders_arg]))
    if token_id is not None:
        statements.append((_positions_sql("token"), [key, token_id]))
    elif order_key is not None:
        statements.append((_positions_sql("order"), [key, order_key]))
    elif tokens is not None:
        statements.append((_positions_sql("tokens"), [key, list(tokens)]))
    elif positions:
        statements.append((_positions_sql("reserved"), [key]))
    n_market = n_replay = n_trigger = -1
    if token_id is not None or (order_key is not None and market):
        n_market = len(statements)
        statements.append(
            (_market_sql(token_id is None), [token_id if token_id is not None else order_key])
        )
    if client_order_id is not None:
        n_replay = len(statements)
        statements.append((_replay_sql(), [key, client_order_id]))
    if trigger_key is not None:
        n_trigger = len(statements)
        statements.append((_trigger_sql(), [trigger_key]))
    results = _fetch(db, statements)
    info = MarketInfo(*results[n_market][0]) if n_market >= 0 and results[n_market] else None
    if not results[0]:
        return Locked(None, market=info)
    row = results[0][0]
    n = len(_ACCOUNT_READ)
    last_filled_at, tenant_id, enabled, tz, at = row[n:]
    account = AccountState(*row[:n])
    account.last_filled_at = last_filled_at
    account.day_boundary = day_boundary_of(tz, at)
    locked = Locked(
        account,
        tenant_id=tenant_id,
        tenant_enabled=enabled is not False,
        market=info,
        positions={},
        orders=[],
    )
    i = 1
    if order_key is not None or orders is not None:
        locked.orders = [OrderState(*r) for r in results[i]]
        i += 1
    if token_id is not None or order_key is not None or tokens is not None or positions:
        locked.positions = {r[1]: PositionState(*r) for r in results[i]}
    if n_replay >= 0 and results[n_replay]:
        locked.replay_of = results[n_replay][0][0]
    if n_trigger >= 0:
        locked.duplicate = bool(results[n_trigger][0][0])
    return locked


# --- the writer ---------------------------------------------------------------------------------
@cache
def _insert_sql(model: Any, names: tuple[str, ...], rows: int) -> str:
    columns = ", ".join(model._meta.get_field(n).column for n in names)
    one = "(" + ", ".join(["%s"] * len(names)) + ")"
    return f"INSERT INTO {model._meta.db_table} ({columns}) VALUES {', '.join([one] * rows)}"


@cache
def _update_sql(model: Any, names: tuple[str, ...]) -> str:
    sets = ", ".join(f"{model._meta.get_field(n).column} = %s" for n in names)
    return f"UPDATE {model._meta.db_table} SET {sets} WHERE {model._meta.pk.column} = %s"


_POSITION_INSERT = ("account", "epoch", *_POSITION_READ[1:], "updated_at")
_ORDER_INSERT = (*_ORDER_READ, "updated_at")
_FILL_INSERT = ("account", *_FILL_ROW)
_LEDGER_INSERT = (
    "account", "epoch", "kind", "amount", "balance_after", "order_id", "fill_id", "memo",
    "created_at",
)  # fmt: skip
_SNAPSHOT_INSERT = ("account", "epoch", "at", "equity", "cash", "positions_value")


def write(fx: Effects, *, account: bool = True) -> None:
    """Persist what the engine computed for one event, in this transaction, in ONE round
    trip: new orders, changed orders, new and changed positions, fills, ledger entries,
    the equity snapshot, and the account row (`account=False`: it did not change). Caller
    holds the row locks `lock` took."""
    a, now = fx.account, fx.now
    statements: list[tuple[str, list[Any]]] = []
    new_orders = [o for o in fx.orders if o.new]
    changed = [o for o in fx.orders if not o.new]
    if new_orders:
        params = []
        for o in new_orders:
            params += [getattr(o, n) for n in _ORDER_STATE]
            params.append(now)
            o.new = False
        statements.append((_insert_sql(Order, _ORDER_INSERT, len(new_orders)), params))
    statements.extend(
        (_update_sql(Order, (*_ORDER_WRITE, "updated_at")),
         [*(getattr(o, n) for n in _ORDER_WRITE), now, o.id])
        for o in changed
    )  # fmt: skip
    for p in fx.positions:
        if p.id is None:
            if p.opened_at is None:
                p.opened_at = now
            values = [a.id, a.epoch, *(getattr(p, n) for n in _POSITION_READ[1:]), now]
            statements.append((_insert_sql(Position, _POSITION_INSERT, 1), values))
        else:
            values = [*(getattr(p, n) for n in _POSITION_WRITE), now, p.id]
            statements.append((_update_sql(Position, (*_POSITION_WRITE, "updated_at")), values))
    if fx.fills:
        params = []
        for f in fx.fills:
            params.append(a.id)
            params += [getattr(f, n) for n in _FILL_ROW]
            params[-len(_FILL_ROW) + _FILL_ROW.index("levels")] = (
                None if f.levels is None else Jsonb(f.levels)
            )
        statements.append((_insert_sql(Fill, _FILL_INSERT, len(fx.fills)), params))
    if fx.ledger:
        params = []
        for e in fx.ledger:
            params += [a.id, e.epoch, e.kind, e.amount, e.balance_after, e.order_id, e.fill_id,
                       e.memo, now]  # fmt: skip
        statements.append((_insert_sql(LedgerEntry, _LEDGER_INSERT, len(fx.ledger)), params))
    if fx.snapshot is not None:
        s = fx.snapshot
        statements.append(
            (
                _insert_sql(EquitySnapshot, _SNAPSHOT_INSERT, 1),
                [a.id, s.epoch, s.at, s.equity, s.cash, s.positions_value],
            )
        )
    if account:
        statements.append(
            (
                _update_sql(Account, (*_ACCOUNT_WRITE, "updated_at")),
                [*(getattr(a, n) for n in _ACCOUNT_WRITE), now, a.id],
            )
        )
    if not statements:
        return
    _send(_db(), statements, fetch=False)


# --- a trader's own account -----------------------------------------------------------------
@cache
def _owned_account_sql(for_update: bool) -> str:
    a_cols = ", ".join(f"a.{f.column}" for f in Account._meta.concrete_fields)
    t_cols = ", ".join(f"t.{f.column}" for f in Tenant._meta.concrete_fields)
    lock = "FOR UPDATE OF a" if for_update else ""
    return f"""
        SELECT {a_cols}, {t_cols}
          FROM {Account._meta.db_table} a LEFT JOIN {Tenant._meta.db_table} t
            ON t.id = a.tenant_id
         WHERE a.id = %s AND a.owner_id = %s {lock}
    """


def owned_account_row(
    account_id: uuid.UUID, *, owner_id: Any, for_update: bool = False
) -> tuple[Any, ...] | None:
    """Every column of the account (then of its tenant) if `owner_id` owns it, else None;
    `for_update` locks the account row (inside a transaction). Every trader request reads
    it: the ORM's select_related of the two wide rows cost several times running it."""
    return _fetch_one(_owned_account_sql(for_update), [account_id, owner_id])


# --- the account-state envelope (reads committed rows, no lock) --------------------------------
@cache
def _envelope_sql(personal: bool, owned: bool) -> str:
    """The account row with its open-order count, its equity at the day boundary, the
    epoch's first equity and whether it holds positions; scoped to a tenant's accounts (or
    to personal ones) and, with `owned`, to one owner's."""
    account, order = Account._meta.db_table, Order._meta.db_table
    snapshot, position = EquitySnapshot._meta.db_table, Position._meta.db_table
    first = (
        f"FROM {snapshot} s WHERE s.account_id = a.id AND s.epoch = a.epoch "
        "ORDER BY s.at, s.id LIMIT 1"
    )
    tenant = "a.tenant_id IS NULL" if personal else "a.tenant_id = %s"
    owner = "AND a.owner_id = %s" if owned else ""
    return f"""
        SELECT a.id, a.owner_id, a.external_id, a.stage, a.status, a.epoch, a.rules, a.metadata,
               a.starting_balance, a.cash, a.reserved_cash, a.realized_pnl, a.fees_paid,
               a.high_water_mark, a.max_drawdown, a.max_drawdown_pct, a.trading_days,
               a.created_at, a.updated_at, a.closed_at, a.last_reset_at,
               (SELECT COUNT(*) FROM {order} o
                 WHERE o.account_id = a.id AND o.status = 'live'),
               (SELECT s.equity FROM {snapshot} s
                 WHERE s.account_id = a.id AND s.epoch = a.epoch AND s.at <= %s
                 ORDER BY s.at DESC, s.id DESC LIMIT 1),
               (SELECT s.equity {first}),
               (SELECT s.at {first}),
               EXISTS (SELECT 1 FROM {position} p
                        WHERE p.account_id = a.id AND p.epoch = a.epoch
                          AND p.status = 'open' AND p.size > 0)
          FROM {account} a
         WHERE a.id = %s AND {tenant} {owner}
    """


def envelope_row(
    account_id: uuid.UUID, *, tenant_id: Any, owner_id: Any, boundary: dt.datetime
) -> tuple[Any, ...] | None:
    """The envelope's account row (see `_envelope_sql`), or None outside the scope."""
    params: list[Any] = [boundary, account_id]
    if tenant_id is not None:
        params.append(tenant_id)
    if owner_id is not None:
        params.append(owner_id)
    return _fetch_one(_envelope_sql(tenant_id is None, owner_id is not None), params)


@cache
def _open_positions_sql() -> str:
    return f"""
        SELECT token_id, market_id, market_question, outcome, size, avg_price, cost_basis,
               last_mark, last_mark_at
          FROM {Position._meta.db_table}
         WHERE account_id = %s AND epoch = %s AND status = 'open' AND size > 0
         ORDER BY opened_at, id
    """


def open_position_rows(account_id: uuid.UUID, epoch: int) -> list[tuple[Any, ...]]:
    """The account's open positions with shares in an epoch, oldest first."""
    with _db().cursor() as cursor:
        cursor.execute(_open_positions_sql(), [account_id, epoch])
        return cursor.fetchall()


# --- models for callers that return them ---------------------------------------------------------
def order_model(order: OrderState, *, at: dt.datetime | None = None) -> Order:
    """The Order instance of a state the writer persisted (for the API bodies)."""
    values = {n: getattr(order, n) for n in _ORDER_STATE}
    obj = Order(**values, updated_at=at or order.created_at or timezone.now())
    obj._state.adding = False
    obj._state.db = DEFAULT_DB_ALIAS
    return obj


def fill_model(row: FillRow, account_id: uuid.UUID) -> Fill:
    obj = Fill(account_id=account_id, **{n: getattr(row, n) for n in _FILL_ROW})
    obj._state.adding = False
    obj._state.db = DEFAULT_DB_ALIAS
    return obj
