"""Order placement: validation, the taker walk at entry, and the money that moves
(trading-engine.md §2, §3, §5; docs/fill-model.md is the prose version of this file).

Path of one order:
  1. Shape checks (no DB, no lock): VALIDATION_FAILED, INVALID_POST_ONLY_ORDER_TYPE,
     INVALID_ORDER_EXPIRATION — for the trader API (`owner`), after its account checks.
  2. ONE read of the token's top from the price bus (`latest_live`: the top and its shard's
     feed heartbeat in one round trip), before the lock.
  3. One transaction under the account row lock (retried on deadlock/serialization),
     opened by ONE round trip: the lock (with the tenant's state), the positions (locked,
     with the last fill's time), the token with its market and the client_order_id lookup.
     Then, in this order: for the trader API NOT_FOUND (not theirs), ACCOUNT_CLOSED,
     TENANT_DISABLED and the shape checks; the token (VALIDATION_FAILED), the account,
     the client_order_id replay, ACCOUNT_CLOSED, MARKET_CLOSED; MARKET_NOT_READY, then the
     tick and min-size rules against the live tick, then STALE_BOOK for orders that would
     take unless the book is live (the top is `fresh` AND its feed's heartbeat is younger
     than PRICE_BUS_HEARTBEAT_STALE_SECONDS: a dead or hung feed leaves `fresh` tops
     behind).
  4. Still under the lock: the balance/position check, the walk with depletion (its
     records read with the positions' marks in one Redis round trip), then every write —
     Order, Fills, LedgerEntries, Position, equity snapshot, the account's cached balances —
     sent as one statement list (one round trip on PostgreSQL; core.sqlrows).

All the SQL of a placement is fixed (core.sqlrows): building it with the ORM cost more CPU
than running it (docs/benchmarks.md).

Rejections 1–3 never reached the engine: nothing is stored (the transaction of step 3 rolls
back). Rejections decided in step 4 against the locked account and the book —
INVALID_ORDER_NOT_ENOUGH_BALANCE, INSUFFICIENT_POSITION, INVALID_POST_ONLY_ORDER,
FOK_ORDER_NOT_FILLED_ERROR — are stored as an Order with status `rejected` and `reason` =
the code (committed, then the error is raised), so a retry with the same client_order_id
raises the same error again instead of trading.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from functools import cache
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.models import Account, LedgerEntry, Position
from accounts.services.wallets import equity_snapshot_build, ledger_entries_build
from core import errors
from core.clock import trading_day
from core.db import db_datetime, retry_on_conflict
from core.money import CASH_QUANTUM, SHARE_QUANTUM, ZERO, to_decimal
from core.sqlrows import (
    Statement,
    convert_row,
    fetch_statements,
    insert_objects,
    model_from_row,
    run_statements,
    update_fields,
)
from marketdata import states as market_states
from marketdata.bus import BookTop, RedisBus, get_bus
from marketdata.models import Market, Token
from trading import states
from trading.depletion import (
    Take,
    get_depletion_store,
    level_keys,
    memories,
    memories_of,
)
from trading.fillmodel import (
    ONE,
    Walk,
    buy_reservation,
    crosses,
    walk_book,
)
from trading.models import Fill, Order, Side
from trading.orderevents import order_events_publish_on_commit
from trading.permissions import ensure_account_tradable
from trading.selectors import PositionRow
from trading.services.fills import fills_number, position_apply, positions_value

GTD_MIN_LEAD = dt.timedelta(seconds=60)  # Polymarket's security threshold
MARKET_BUY_DEFAULT_WORST = Decimal("0.99")
DEPLETION_ATTEMPTS = 16
PRICE_Q = Decimal("0.000001")

# Codes stored as `rejected` orders, to re-raise on a replay of the same client_order_id.
STORED_REJECTIONS: dict[str, type[errors.DomainError]] = {
    cls.code: cls
    for cls in (
        errors.InvalidOrderNotEnoughBalance,
        errors.InsufficientPosition,
        errors.InvalidPostOnlyOrder,
        errors.FokOrderNotFilledError,
    )
}


@dataclass(frozen=True)
class PlacedOrder:
    order: Order
    fills: list[Fill]
    created: bool


@dataclass(frozen=True)
class OrderRequest:
    """An order after shape checks and defaults (price may still be None until the tick is
    known: market orders default their worst price from it)."""

    token_id: str
    side: str
    type: str
    time_in_force: str
    price: Decimal | None
    price_given: bool
    size: Decimal | None
    amount: Decimal | None
    expiration: dt.datetime | None
    post_only: bool
    client_order_id: str | None

    @property
    def is_buy(self) -> bool:
        return self.side == Side.BUY

    @property
    def is_taker_only(self) -> bool:
        return self.time_in_force in (Order.TimeInForce.FOK, Order.TimeInForce.FAK)


@dataclass
class _Outcome:
    placed: PlacedOrder | None = None
    error: errors.DomainError | None = None


@dataclass
class _Applied:
    fills: list[Fill] = field(default_factory=list)
    ledger: list[LedgerEntry] = field(default_factory=list)
    position: Position | None = None
    realized: Decimal = ZERO
    fees: Decimal = ZERO


# --- 1. shape ---------------------------------------------------------------------------------
def _invalid(field_name: str, message: str) -> errors.DomainError:
    return errors.ValidationFailed(details={field_name: [message]})


def _decimal(value: Any, field_name: str) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        return to_decimal(value)
    except (TypeError, ValueError) as exc:
        raise _invalid(field_name, "must be a decimal number (as a string)") from exc


def _expiration(value: Any, now: dt.datetime) -> dt.datetime | None:
    if value is None or value in (0, "0", ""):
        return None
    if isinstance(value, dt.datetime):
        return value
    try:
        seconds = int(str(value))
    except ValueError as exc:
        raise _invalid("expiration", "must be unix seconds") from exc
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def order_request(
    *,
    token_id: Any,
    side: Any,
    type: Any,
    price: Any = None,
    size: Any = None,
    amount: Any = None,
    time_in_force: Any = None,
    expiration: Any = None,
    post_only: Any = False,
    client_order_id: Any = None,
    now: dt.datetime | None = None,
) -> OrderRequest:
    """Shape checks and defaults, no I/O. Raises VALIDATION_FAILED,
    INVALID_POST_ONLY_ORDER_TYPE or INVALID_ORDER_EXPIRATION."""
    now = now or timezone.now()
    if not isinstance(token_id, str) or not token_id:
        raise _invalid("token_id", "required")
    if side not in Side.values:
        raise _invalid("side", "must be BUY or SELL")
    if type not in Order.Type.values:
        raise _invalid("type", "must be limit or market")
    tif = time_in_force or (
        Order.TimeInForce.GTC if type == Order.Type.LIMIT else Order.TimeInForce.FOK
    )
    if tif not in Order.TimeInForce.values:
        raise _invalid("time_in_force", "must be GTC, GTD, FOK or FAK")
    if type == Order.Type.MARKET and tif not in (Order.TimeInForce.FOK, Order.TimeInForce.FAK):
        raise _invalid("time_in_force", "market orders are FOK or FAK")
    if not isinstance(post_only, bool):
        raise _invalid("post_only", "must be a boolean")
    if client_order_id is not None and (
        not isinstance(client_order_id, str) or not 0 < len(client_order_id) <= 128
    ):
        raise _invalid("client_order_id", "1 to 128 characters")
    price_d = _decimal(price, "price")
    size_d = _decimal(size, "size")
    amount_d = _decimal(amount, "amount")
    market_buy = type == Order.Type.MARKET and side == Side.BUY
    if market_buy:
        if amount_d is None or size_d is not None:
            raise _invalid("amount", "a market BUY spends `amount` (cash) and has no size")
        if amount_d <= 0 or amount_d != amount_d.quantize(CASH_QUANTUM):
            raise _invalid("amount", "must be > 0 with at most 6 decimals")
    else:
        if size_d is None or amount_d is not None:
            raise _invalid("size", "required (shares); `amount` is only for market BUYs")
        if size_d <= 0 or size_d != size_d.quantize(SHARE_QUANTUM):
            raise _invalid("size", "must be > 0 with at most 2 decimals")
    if type == Order.Type.LIMIT and price_d is None:
        raise _invalid("price", "required for limit orders")
    exp = _expiration(expiration, now)
    if post_only and (type != Order.Type.LIMIT or tif not in ("GTC", "GTD")):
        raise errors.InvalidPostOnlyOrderType()
    if tif == Order.TimeInForce.GTD:
        if exp is None or exp < now + GTD_MIN_LEAD:
            raise errors.InvalidOrderExpiration()
    elif exp is not None:
        raise _invalid("expiration", "only GTD orders carry an expiration")
    return OrderRequest(
        token_id=token_id,
        side=side,
        type=type,
        time_in_force=tif,
        price=price_d,
        price_given=price_d is not None,
        size=size_d,
        amount=amount_d,
        expiration=exp,
        post_only=post_only,
        client_order_id=client_order_id,
    )


def _same_content(order: Order, req: OrderRequest) -> bool:
    def eq(a: Decimal | None, b: Decimal | None) -> bool:
        return (a is None and b is None) or (a is not None and b is not None and a == b)

    return (
        order.token_id == req.token_id
        and order.side == req.side
        and order.type == req.type
        and order.time_in_force == req.time_in_force
        and order.post_only == req.post_only
        and eq(order.size, req.size)
        and eq(order.amount, req.amount)
        and order.expiration == req.expiration
        and (not req.price_given or eq(order.price, req.price))
    )


def _replay(existing: Order, req: OrderRequest) -> PlacedOrder:
    """Same client_order_id: same content returns the first result (or its error again)."""
    if not _same_content(existing, req):
        raise errors.InvalidOrderDuplicated()
    if existing.status == Order.Status.REJECTED:
        raise STORED_REJECTIONS.get(existing.reason, errors.ValidationFailed)()
    return PlacedOrder(existing, list(existing.fills.order_by("seq")), created=False)


# --- 2/3. market and book -----------------------------------------------------------------------
# Fixed SQL for the reads of one placement (building them with the ORM cost more CPU than
# running them; docs/benchmarks.md). Only model table and column names are interpolated;
# every value is a bound parameter.
_MARKET_FIELDS = (
    "id",
    "condition_id",
    "question",
    "tick_size",
    "min_order_size",
    "closed",
    "status",
    "accepting_orders",
    "fees_enabled",
    "fee_rate",
    "fee_exponent",
)
_TOKEN_FIELDS = ("id", "market", "token_id", "outcome")
_ACCOUNT_FIELDS = (
    "id",
    "tenant",
    "status",
    "epoch",
    "cash",
    "reserved_cash",
    "realized_pnl",
    "fees_paid",
    "high_water_mark",
    "max_drawdown",
    "max_drawdown_pct",
    "trading_days",
    "last_trading_day",
    "last_fill_seq",
)
# The tenant's: ensure_account_tradable and the fill's trading day.
Tenant: Any = Account._meta.get_field("tenant").related_model
_TENANT_FIELDS = ("id", "enabled", "day_boundary_tz", "day_boundary_time")
# The position columns placement reads, writes or values with (the others load on access).
_POSITION_FIELDS = (
    "id",
    "token_id",
    "status",
    "size",
    "reserved_size",
    "avg_price",
    "cost_basis",
    "realized_pnl",
    "last_mark",
    "last_mark_at",
)
# What valuing a position at its mark reads (trading.selectors.position_mark, market_value).
_VALUE_FIELDS = ("token_id", "size", "avg_price", "cost_basis", "last_mark", "last_mark_at")


def _columns(model: Any, alias: str, names: tuple[str, ...]) -> str:
    return ", ".join(f"{alias}.{model._meta.get_field(n).column}" for n in names)


@dataclass(frozen=True)
class _Sql:
    token: str
    account: str  # locks the account row; its tenant's columns ride along
    positions: str  # locks them
    replay: str


@cache
def _sql(owned: bool) -> _Sql:
    """The reads of one placement. `owned`: the account and its positions only if they
    belong to the user of the last parameter (the trader API's caller)."""
    token_t, market_t = Token._meta.db_table, Market._meta.db_table
    account_t, position_t = Account._meta.db_table, Position._meta.db_table
    fill_t, order_t, tenant_t = Fill._meta.db_table, Order._meta.db_table, Tenant._meta.db_table
    owner = "AND a.owner_id = %s" if owned else ""
    lock = "FOR UPDATE OF a"  # only the account row: the tenant is on the nullable side
    token_sql = f"""
        SELECT {_columns(Token, "t", _TOKEN_FIELDS)}, {_columns(Market, "m", _MARKET_FIELDS)}
          FROM {token_t} t JOIN {market_t} m ON m.id = t.market_id
         WHERE t.token_id = %s
    """
    account_sql = f"""
        SELECT {_columns(Account, "a", _ACCOUNT_FIELDS)}, {_columns(Tenant, "t", _TENANT_FIELDS)}
          FROM {account_t} a LEFT JOIN {tenant_t} t ON t.id = a.tenant_id
         WHERE a.id = %s {owner} {lock}
    """
    # The order's position and every other open one (for the equity snapshot), with the
    # account's last fill time (fills_number's clamp). Sent right after the account lock,
    # in the same round trip: the account's epoch and last fill come from its row, which
    # that lock has just frozen (each statement reads the latest committed rows).
    positions_sql = f"""
        SELECT {_columns(Position, "p", _POSITION_FIELDS)},
               (SELECT f.filled_at FROM {fill_t} f
                 WHERE f.account_id = a.id AND f.seq = a.last_fill_seq)
          FROM {position_t} p JOIN {account_t} a ON a.id = p.account_id
         WHERE p.account_id = %s AND p.epoch = a.epoch {owner}
           AND (p.token_id = %s OR (p.status = %s AND p.size > 0))
         ORDER BY p.opened_at, p.id FOR UPDATE OF p
    """
    replay_sql = f"SELECT o.id FROM {order_t} o WHERE o.account_id = %s AND o.client_order_id = %s"
    return _Sql(token_sql, account_sql, positions_sql, replay_sql)


def _token_from_row(row: Sequence[Any]) -> Token:
    """The token of a row of the token read, with its market (only the columns placement
    uses; others load on access)."""
    n = len(_TOKEN_FIELDS)
    token = model_from_row(Token, _TOKEN_FIELDS, row[:n])
    token.market = model_from_row(Market, _MARKET_FIELDS, row[n:])
    return token


@dataclass
class _Locked:
    """What `_lock_and_read` read, the account row locked."""

    account: Account | None  # None: no such account (or, with an owner, not theirs)
    token: Token | None  # with its market; None: no such token
    position: Position | None  # this epoch's position in the order's token, if any
    others: list[PositionRow]  # the other open positions with shares (equity snapshot)
    previous: dict[str, Any]  # fills_number's keyword for the last fill's time
    replay_of: Any  # pk of the account's order with the request's client_order_id, if any


def _lock_and_read(
    account_id: Any, token_id: Any, client_order_id: Any, owner: Any = None
) -> _Locked:
    """ONE round trip (core.sqlrows.fetch_statements): SELECT … FOR UPDATE the account row
    (the columns placement moves, with its tenant's state and day boundary), then, locked,
    its position of this epoch in `token_id` whatever its state and its OTHER positions of
    this epoch that are open with shares, with the `filled_at` of the account's last fill;
    the token with its market; and, with a `client_order_id`, the id of the account's order
    that carries it. With an `owner`, the account and its positions only if they are that
    user's. A malformed account id reads as no account."""
    try:
        account_key: uuid.UUID | None = uuid.UUID(str(account_id))
    except ValueError:
        account_key = None
    token_key = token_id if isinstance(token_id, str) else ""
    sql = _sql(owned=owner is not None)
    mine = [] if owner is None else [owner.pk]
    statements: list[Statement] = [(sql.token, [token_key])]
    if account_key is not None:
        statements += [
            (sql.account, [account_key, *mine]),
            (sql.positions, [account_key, *mine, token_key, Position.Status.OPEN]),
        ]
        if isinstance(client_order_id, str):
            statements.append((sql.replay, [account_key, client_order_id]))
    results = fetch_statements(statements)
    token = _token_from_row(results[0][0]) if results[0] else None
    if account_key is None or not results[1]:
        return _Locked(None, token, None, [], {}, None)
    account_rows, rows = results[1], results[2]
    n = len(_ACCOUNT_FIELDS)
    account = model_from_row(Account, _ACCOUNT_FIELDS, account_rows[0][:n])
    if account.tenant_id is not None:
        account.tenant = model_from_row(Tenant, _TENANT_FIELDS, account_rows[0][n:])
    replay_of = results[3][0][0] if len(results) > 3 and results[3] else None
    n = len(_POSITION_FIELDS)
    token_column = _POSITION_FIELDS.index("token_id")
    value_columns = [_POSITION_FIELDS.index(name) for name in _VALUE_FIELDS]
    position, others = None, []
    for r in rows:
        if r[token_column] == token_key:
            position = model_from_row(Position, _POSITION_FIELDS, r[:n])
        else:
            others.append(
                _value_row(convert_row(Position, _VALUE_FIELDS, [r[i] for i in value_columns]))
            )
    # Empty when no row came back to carry the last fill's time: fills_number looks it up.
    previous = {"previous_filled_at": db_datetime(rows[0][n])} if rows else {}
    return _Locked(account, token, position, others, previous, replay_of)


def _fee_params(market: Market) -> tuple[Decimal, Decimal]:
    if not market.fees_enabled or not market.fee_rate:
        return ZERO, ONE
    return market.fee_rate, market.fee_exponent if market.fee_exponent is not None else ONE


def _tick(top: BookTop, market: Market) -> Decimal:
    tick = top.tick_size_value() or market.tick_size
    return tick if tick else Decimal("0.01")


def _with_price(req: OrderRequest, tick: Decimal) -> OrderRequest:
    """Apply the tick rules (and the market orders' default worst price)."""
    price = req.price
    if price is None:  # market order: worst acceptable price
        price = min(MARKET_BUY_DEFAULT_WORST, ONE - tick) if req.is_buy else tick
    if not (tick <= price <= ONE - tick) or price % tick != 0:
        raise errors.InvalidOrderMinTickSize(
            details={"price": [str(price)], "tick_size": [str(tick)]}
        )
    return OrderRequest(**{**req.__dict__, "price": price})


def _book_levels(top: BookTop, req: OrderRequest) -> list[tuple[Decimal, Decimal]]:
    """The opposite side best-first, only the levels inside the order's limit."""
    assert req.price is not None
    rows = top.asks if req.is_buy else top.bids
    out: list[tuple[Decimal, Decimal]] = []
    for p, s in rows:
        price = Decimal(p)
        if not crosses(req.side, price, req.price):
            break
        out.append((price, Decimal(s)))
    return out


def queue_ahead_at(top: BookTop, side: str, price: Decimal) -> Decimal:
    """The size shown at `price` on the order's own side of the book as it arrives: what
    must trade at that price before a trade there can reach it (the queue-position model
    of maker fills, trading-engine.md §4). 0 when no level is shown at that price (a new
    best price, a gap between levels, or deeper than the published depth)."""
    for p, s in top.bids if side == Side.BUY else top.asks:
        if Decimal(p) == price:
            return Decimal(s)
    return ZERO


# --- public -----------------------------------------------------------------------------------
def order_place(
    *,
    account_id: Any,
    token_id: str,
    side: str,
    type: str,
    price: Any = None,
    size: Any = None,
    amount: Any = None,
    time_in_force: str | None = None,
    expiration: Any = None,
    post_only: bool = False,
    client_order_id: str | None = None,
    owner: Any = None,
) -> PlacedOrder:
    """Place an order: validate, fill what crosses as taker at entry, rest or cancel the rest.

    `owner`, the trader API's caller: the account must be theirs (NOT_FOUND otherwise, as a
    missing one), open (ACCOUNT_CLOSED) and, for a firm's account, its firm enabled
    (TENANT_DISABLED), and those checks come before the order's own. Without it the order's
    shape is checked first, before any I/O, then the token, then the account.

    Locking: reads the book (ONE bus read), then takes the account row lock and reads the
    token, the positions and any client_order_id twin with it (ONE round trip); every check
    and everything that moves money happens in that one transaction (retried on deadlock or
    serialization failure). Depletion is taken with a compare-and-set outside the DB.
    Idempotency: with `client_order_id`, a retry with the same content returns the first
    order (created=False) — or raises the same error if it was stored as rejected —, and
    different content raises INVALID_ORDER_DUPLICATED. Without it every call is a new order.
    Raises the engine's DomainErrors (core.errors.ENGINE_ERROR_CODES) and NOT_FOUND.
    """
    now = timezone.now()
    shape = functools.partial(
        order_request,
        token_id=token_id,
        side=side,
        type=type,
        price=price,
        size=size,
        amount=amount,
        time_in_force=time_in_force,
        expiration=expiration,
        post_only=post_only,
        client_order_id=client_order_id,
        now=now,
    )
    req = shape() if owner is None else None  # no I/O for a malformed order
    # Before the lock: the book may be read for an order that is then refused.
    top, live = get_bus().latest_live(token_id) if isinstance(token_id, str) else (None, False)
    outcome = _place_locked(
        account_id=account_id,
        token_id=token_id,
        client_order_id=client_order_id,
        owner=owner,
        req=req or shape,
        top=top,
        live=live,
    )
    if outcome.error is not None:
        raise outcome.error
    assert outcome.placed is not None
    return outcome.placed


def _checked(
    locked: _Locked,
    req: OrderRequest | Callable[[], OrderRequest],
    top: BookTop | None,
    live: bool,
    owner: Any,
) -> tuple[Account, OrderRequest, Token] | _Outcome:
    """The checks before the engine decides, in their order (see order_place); raises the
    refusals nothing is stored for, returns the outcome of a client_order_id replay."""
    account = locked.account
    if owner is not None:
        if account is None:
            raise errors.NotFound()
        ensure_account_tradable(account)
    if not isinstance(req, OrderRequest):
        req = req()
    token = locked.token
    if token is None:
        raise _invalid("token_id", "unknown token")
    if account is None:
        raise errors.NotFound("No such account.")
    if locked.replay_of is not None:
        try:
            return _Outcome(placed=_replay(Order.objects.get(pk=locked.replay_of), req))
        except errors.DomainError as exc:
            return _Outcome(error=exc)
    if account.is_closed:
        raise errors.AccountClosed()
    market = token.market
    if market.closed or market.status != market_states.OPEN or not market.accepting_orders:
        raise errors.MarketClosed()
    if top is None:
        raise errors.MarketNotReady()
    req = _with_price(req, _tick(top, market))
    if market.min_order_size and req.size is not None and req.size < market.min_order_size:
        raise errors.InvalidOrderMinSize(
            details={"size": [str(req.size)], "min_order_size": [str(market.min_order_size)]}
        )
    takes_liquidity = req.type == Order.Type.MARKET or (
        not req.post_only and bool(_book_levels(top, req))
    )
    if not live and takes_liquidity:
        raise errors.StaleBook()
    return account, req, token


# --- 4. under the lock ------------------------------------------------------------------------
def _new_order(account: Account, req: OrderRequest, market: Market, now: dt.datetime) -> Order:
    assert req.price is not None
    return Order(
        account=account,
        epoch=account.epoch,
        token_id=req.token_id,
        market_id=market.condition_id,
        side=req.side,
        type=req.type,
        time_in_force=req.time_in_force,
        price=req.price,
        size=req.size,
        amount=req.amount,
        expiration=req.expiration,
        post_only=req.post_only,
        client_order_id=req.client_order_id,
        status=Order.Status.LIVE,
        created_at=now,
    )


def _reject(order: Order, error: errors.DomainError) -> _Outcome:
    order.status = Order.Status.REJECTED
    order.reason = error.code
    run_statements([insert_objects([order])])
    return _Outcome(error=error)


@retry_on_conflict()
@transaction.atomic
def _place_locked(
    *,
    account_id: Any,
    token_id: Any,
    client_order_id: Any,
    owner: Any,
    req: OrderRequest | Callable[[], OrderRequest],
    top: BookTop | None,
    live: bool,
) -> _Outcome:
    locked = _lock_and_read(account_id, token_id, client_order_id, owner)
    checked = _checked(locked, req, top, live, owner)
    if isinstance(checked, _Outcome):  # a replay of client_order_id
        return checked
    account, req, token = checked
    assert top is not None
    market = token.market
    tenant = account.tenant if account.tenant_id is not None else None
    assert req.price is not None
    now = timezone.now()
    order = _new_order(account, req, market, now)
    rate, exponent = _fee_params(market)

    position, others, previous = locked.position, locked.others, locked.previous
    if req.is_buy:
        need = req.amount if req.amount is not None else None
        if need is None:
            assert req.size is not None
            need = buy_reservation(price=req.price, size=req.size, rate=rate, exponent=exponent)
        if account.available_cash < need:
            return _reject(order, errors.InvalidOrderNotEnoughBalance())
    else:
        assert req.size is not None
        held = ZERO
        if position is not None and position.status == Position.Status.OPEN:
            held = position.size - position.reserved_size
        if held < req.size:
            return _reject(order, errors.InsufficientPosition())

    crossing = _book_levels(top, req)
    book_side = "asks" if req.is_buy else "bids"
    walk = Walk()
    tops: dict[str, BookTop] | None = None
    if req.post_only or not live:
        # A maker-only order (or a non-marketable one on a stale book, already filtered
        # before the lock): refuse only if it would cross what is left of the book.
        if crossing:
            keys = level_keys(top, book_side, len(crossing))
            mems = memories(get_depletion_store(), keys, [s for _, s in crossing])
            if any(s - m.taken > 0 for (_, s), m in zip(crossing, mems, strict=True)):
                return _reject(order, errors.InvalidPostOnlyOrder())
    elif crossing:
        keys = level_keys(top, book_side, len(crossing))
        # What the equity snapshot values, with the depletion records: one Redis read.
        tops, raws = _marks_and_memories([*(r.token_id for r in others), req.token_id], keys)
        walk_or_error = _walk_with_depletion(req, crossing, keys, rate, exponent, raws)
        if isinstance(walk_or_error, errors.DomainError):
            return _reject(order, walk_or_error)
        walk = walk_or_error
    elif req.time_in_force == Order.TimeInForce.FOK:
        return _reject(order, errors.FokOrderNotFilledError())

    order.queue_ahead = queue_ahead_at(top, req.side, req.price)
    # Every write of the order goes out together at the end, in this order: the order row
    # (once, in its final state), its fills, the ledger, the position, the equity snapshot
    # and the ONE update of the account row (foreign keys are checked at commit).
    applied = _apply_fills(account, order, market, token, position, walk, top, rate, now, previous)
    position = applied.position or position
    position_dirty = bool(applied.fills)
    if _finish_order(account, order, walk, rate, exponent, position):
        position_dirty = True
    writes: list[Statement] = [insert_objects([order])]
    if applied.fills:
        writes.append(insert_objects(applied.fills))
        writes.append(insert_objects(applied.ledger))
    if position is not None and position_dirty:
        if position.pk is None:
            writes.append(insert_objects([position]))
        else:
            writes.append(
                update_fields(
                    Position,
                    position.pk,
                    {
                        "size": position.size,
                        "reserved_size": position.reserved_size,
                        "avg_price": position.avg_price,
                        "cost_basis": position.cost_basis,
                        "realized_pnl": position.realized_pnl,
                        "updated_at": now,
                    },
                )
            )
    if order.status == Order.Status.LIVE:  # it rests: the maker matchers index it
        order_events_publish_on_commit([order])

    updates: dict[str, Any] = {"reserved_cash": account.reserved_cash, "updated_at": now}
    if applied.fills:
        account.realized_pnl += applied.realized
        account.fees_paid += applied.fees
        updates.update(
            cash=account.cash,
            realized_pnl=account.realized_pnl,
            fees_paid=account.fees_paid,
            last_fill_seq=account.last_fill_seq,
        )
        day = _trading_day(account, now, tenant)
        if account.last_trading_day != day:
            account.trading_days += 1
            account.last_trading_day = day
            updates.update(trading_days=account.trading_days, last_trading_day=day)
        assert position is not None  # it has the fills
        value = positions_value([*others, *_open_row(position)], tops)
        snapshot = equity_snapshot_build(account=account, positions_value=value, at=now)
        writes.append(insert_objects([snapshot]))
        updates.update(
            high_water_mark=account.high_water_mark,
            max_drawdown=account.max_drawdown,
            max_drawdown_pct=account.max_drawdown_pct,
        )
    writes.append(update_fields(Account, account.pk, updates))  # ONE update of the account
    run_statements(writes)
    return _Outcome(placed=PlacedOrder(order, applied.fills, created=True))


def _value_row(values: list[Any]) -> PositionRow:
    """A PositionRow for valuing only (`_VALUE_FIELDS`, in order): no labels."""
    token_id, size, avg_price, cost_basis, last_mark, last_mark_at = values
    return PositionRow(
        token_id=token_id,
        market_id="",
        market_question="",
        outcome="",
        size=size,
        avg_price=avg_price,
        cost_basis=cost_basis,
        last_mark=last_mark,
        last_mark_at=last_mark_at,
    )


def _open_row(position: Position) -> list[PositionRow]:
    """The position as the equity snapshot values it (nothing once it holds no shares)."""
    if position.status != Position.Status.OPEN or position.size <= 0:
        return []
    return [_value_row([getattr(position, name) for name in _VALUE_FIELDS])]


def _trading_day(account: Account, now: dt.datetime, tenant: Any = None) -> dt.date:
    """The fill's trading day at the tenant's day boundary (`tenant` when the caller has it
    loaded already; personal accounts: UTC midnight)."""
    if account.tenant_id is None:
        return trading_day(now, "UTC", dt.time(0, 0))
    if tenant is None or tenant.pk != account.tenant_id:
        tenant = account.tenant
    assert tenant is not None
    return trading_day(now, tenant.day_boundary_tz, tenant.day_boundary_time)


def _marks_and_memories(
    token_ids: list[str], keys: list[str]
) -> tuple[dict[str, BookTop] | None, list[str] | None]:
    """The live tops of `token_ids` and the raw depletion records of `keys`, in ONE round trip
    (the price bus and the depletion memory share settings.REDIS_URL). (None, None) only
    while the bus is not the Redis one: each is then read when used."""
    bus = get_bus()
    if not isinstance(bus, RedisBus):
        return None, None
    tops, raws = bus.latest_many_live_and_get(token_ids, keys)
    return tops, ["" if r is None else r.decode() for r in raws]


def _walk_with_depletion(
    req: OrderRequest,
    crossing: list[tuple[Decimal, Decimal]],
    keys: list[str],
    rate: Decimal,
    exponent: Decimal,
    raws: list[str] | None = None,
) -> Walk | errors.DomainError:
    """Walk what depletion leaves of the crossing levels and take it atomically
    (compare-and-set; re-walk if another order took from a level meanwhile). `keys`: the
    levels' depletion records (`level_keys`); `raws`: their values as the caller just read
    them (the first walk's; re-walks read again)."""
    assert req.price is not None
    store = get_depletion_store()
    published = [s for _, s in crossing]
    for _ in range(DEPLETION_ATTEMPTS):
        mems = memories_of(store.read(keys) if raws is None else raws, published)
        raws = None
        levels = [(p, s, s - m.taken) for (p, s), m in zip(crossing, mems, strict=True)]
        walk = walk_book(
            side=req.side,
            levels=levels,
            limit=req.price,
            size=req.size if req.amount is None else None,
            amount=req.amount,
            rate=rate,
            exponent=exponent,
        )
        if req.time_in_force == Order.TimeInForce.FOK and not walk.complete:
            return errors.FokOrderNotFilledError()
        index = {p: i for i, (p, _) in enumerate(crossing)}
        takes = []
        for t in walk.takes:
            i = index[t.price]
            takes.append(Take(keys[i], mems[i].raw, t.published, mems[i].taken, t.size))
        if store.commit(takes):
            return walk
    raise errors.ServiceUnavailable("The book is too busy; retry.")


def _apply_fills(
    account: Account,
    order: Order,
    market: Market,
    token: Token,
    position: Position | None,
    walk: Walk,
    top: BookTop,
    rate: Decimal,
    now: dt.datetime,
    previous: dict[str, Any],
) -> _Applied:
    """Fills, ledger entries and the position for a walk's takes, in memory: the caller
    inserts `applied.fills` and `applied.ledger` and writes `applied.position` (new when
    it has no pk). `account.cash` and `last_fill_seq` move in memory. Caller holds the
    lock; `previous` is fills_number's keyword for the last fill's time."""
    applied = _Applied()
    if not walk.takes:
        return applied
    if position is None:
        position = Position(
            account=account,
            epoch=account.epoch,
            token_id=order.token_id,
            market_id=market.condition_id,
            market_question=market.question,
            outcome=token.outcome,
            opened_at=now,
        )
    applied.position = position
    vwap = walk.vwap
    assert vwap is not None
    vwap_q = vwap.quantize(PRICE_Q, rounding=ROUND_HALF_EVEN)
    mid = top.mid_value()
    mid_gap = None
    if mid is not None:
        gap = vwap - mid if order.side == Side.BUY else mid - vwap
        mid_gap = gap.quantize(PRICE_Q, rounding=ROUND_HALF_EVEN)
    levels_json = [[str(t.price), str(t.size)] for t in walk.takes]
    book_as_of = (
        dt.datetime.fromtimestamp(top.timestamp_ms / 1000, dt.UTC)
        if top.timestamp_ms is not None
        else None
    )
    entries: list[tuple[str, Decimal, Any, Any, str]] = []  # posted together below
    for n, take in enumerate(walk.takes, start=1):
        notional = take.notional
        realized = position_apply(
            position, side=order.side, size=take.size, notional=notional, fee=take.fee
        )
        fill = Fill(
            account=account,
            seq=0,  # numbered by fills_number
            epoch=account.epoch,
            kind=Fill.Kind.FILL,
            order=order,
            token_id=order.token_id,
            market_id=market.condition_id,
            market_question=market.question,
            outcome=token.outcome,
            side=order.side,
            price=take.price,
            size=take.size,
            notional=notional,
            fee=take.fee,
            fee_rate_bps=rate * 10000,
            liquidity=Fill.Liquidity.TAKER,
            realized_pnl=realized,
            price_source="book",
            book_as_of=book_as_of,
            book_hash=top.hash,
            levels=levels_json,
            vwap=vwap_q,
            mid_gap=mid_gap,
            trigger_key=f"taker:{order.pk}:{n}",
            filled_at=now,
        )
        sign = -1 if order.side == Side.BUY else 1
        entries.append(
            (
                LedgerEntry.Kind.TRADE,
                sign * notional,
                order.pk,
                fill.pk,
                f"{order.side} {take.size} @ {take.price}",
            )
        )
        if take.fee:
            entries.append((LedgerEntry.Kind.FEE, -take.fee, order.pk, fill.pk, "taker fee"))
        applied.fills.append(fill)
        applied.realized += realized
        applied.fees += take.fee
    applied.ledger = ledger_entries_build(account=account, entries=entries)
    fills_number(account=account, fills=applied.fills, **previous)
    order.filled_size = walk.filled
    order.filled_notional = walk.notional
    order.fees_paid = walk.fees
    return applied


def _finish_order(
    account: Account,
    order: Order,
    walk: Walk,
    rate: Decimal,
    exponent: Decimal,
    position: Position | None,
) -> bool:
    """Final status at entry, and the remainder's reservation if it rests (in memory: the
    caller inserts the order and writes the account and the position). True when it
    reserved shares on `position`."""
    if order.amount is not None:
        done = walk.complete
        remaining = ZERO
    else:
        assert order.size is not None
        remaining = order.size - walk.filled
        done = remaining == 0
    reserved_shares = False
    if done:
        target, reason = states.MATCHED, ""
    elif order.time_in_force in (Order.TimeInForce.FAK, Order.TimeInForce.FOK):
        target, reason = states.CANCELED, "FAK_REMAINDER"
    else:  # GTC/GTD: the remainder rests at the limit price, its reservation kept
        target, reason = states.LIVE, ""
        if order.side == Side.BUY:
            order.reserved_cash = buy_reservation(
                price=order.price, size=remaining, rate=rate, exponent=exponent
            )
            account.reserved_cash += order.reserved_cash
        else:
            # A SELL only gets here holding the shares: its position was read locked.
            assert position is not None
            order.reserved_shares = remaining
            position.reserved_size += remaining
            reserved_shares = True
    states.ensure_transition(order.status, target)
    order.status = target
    order.reason = reason
    return reserved_shares
