"""The engine core: what a fill, a cancel or expiry, and a settlement do to an account.

Pure: no I/O, no models, no clock. The caller (trading.store) reads the rows under the
account row lock into the states below; the functions here change those states in memory
and collect the rows to append in an `Effects`; trading.store writes them, in the same
transaction. Every path that moves money — taker fills at entry (trading.services.orders),
maker fills (trading.services.matching), cancels and expiry (trading.services.cancel),
settlement (trading.services.settlement), equity snapshots — goes through here, so each rule
below exists once. docs/engine-rules.md states the rules in prose.

The rules, in the order a fill applies them:
* A resting order's reservation is released by what fills (a BUY gives back the notional at
  its limit plus its share of the fee cushion; a SELL its reserved shares) — before the cash
  moves, so available cash never dips below zero on the way.
* The position folds the fill in (`_position_apply`): a BUY adds at cost, a SELL releases
  its share of the cost basis pro rata and realizes the difference, fees are realized costs.
* The ledger gets one TRADE entry per fill (and a FEE entry for a taker fee); no entry may
  take available cash (cash − reserved) below zero.
* Fills are numbered after the account's last one (`seq`, gap-free, the trades feed's key),
  and `filled_at` never goes back along `seq`.
* A day with a fill of an order is a trading day (settlements are not).
* After the event, one equity snapshot at the positions' marks folds into the epoch's
  high-water mark and maximum drawdown.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from typing import Any, Protocol

from accounts.balances import cash_movement, equity_extremes
from core import errors
from core.clock import trading_day
from core.money import CASH_QUANTUM, PRICE_QUANTUM, ZERO, cash
from trading import states
from trading.fillmodel import buy_reservation

BUY, SELL = "BUY", "SELL"
OPEN, SETTLED = "open", "settled"  # Position.Status values
ACTIVE, CLOSED = "active", "closed"  # Account.Status values
TAKER, MAKER = "taker", "maker"  # Fill.Liquidity values
TRADE, FEE, SETTLEMENT = "TRADE", "FEE", "SETTLEMENT"  # LedgerEntry.Kind values
UTC_MIDNIGHT = ("UTC", dt.time(0, 0))


# --- state read under the lock -----------------------------------------------------------------
@dataclass(slots=True)
class AccountState:
    """The account columns the engine moves, its last fill's time and its trading-day
    boundary (the tenant's, or UTC midnight for a personal account)."""

    id: uuid.UUID
    epoch: int
    status: str
    cash: Decimal
    reserved_cash: Decimal
    realized_pnl: Decimal
    fees_paid: Decimal
    high_water_mark: Decimal
    max_drawdown: Decimal
    max_drawdown_pct: Decimal
    trading_days: int
    last_trading_day: dt.date | None
    last_fill_seq: int
    last_filled_at: dt.datetime | None = None
    day_boundary: tuple[str, dt.time] = UTC_MIDNIGHT

    @property
    def available_cash(self) -> Decimal:
        return self.cash - self.reserved_cash


@dataclass(slots=True)
class PositionState:
    """One position of the account's current epoch; `id` None: new, inserted by the writer."""

    id: int | None
    token_id: str
    market_id: str = ""
    market_question: str = ""
    outcome: str = ""
    status: str = OPEN
    size: Decimal = ZERO
    reserved_size: Decimal = ZERO
    avg_price: Decimal = ZERO
    cost_basis: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    last_mark: Decimal | None = None
    last_mark_at: dt.datetime | None = None
    opened_at: dt.datetime | None = None

    @property
    def free(self) -> Decimal:
        """Shares a new SELL may reserve."""
        return self.size - self.reserved_size if self.status == OPEN else ZERO

    @property
    def valued(self) -> bool:
        """Whether it counts in equity: open with shares."""
        return self.status == OPEN and self.size > 0


@dataclass(slots=True)
class OrderState:
    """An order's columns; `new` orders are inserted by the writer, the others updated."""

    id: uuid.UUID
    account_id: uuid.UUID
    epoch: int
    token_id: str
    market_id: str
    side: str
    price: Decimal
    size: Decimal | None
    status: str
    type: str = "limit"
    time_in_force: str = "GTC"
    amount: Decimal | None = None
    expiration: dt.datetime | None = None
    post_only: bool = False
    client_order_id: str | None = None
    reason: str = ""
    filled_size: Decimal = ZERO
    filled_notional: Decimal = ZERO
    fees_paid: Decimal = ZERO
    reserved_cash: Decimal = ZERO
    reserved_shares: Decimal = ZERO
    queue_ahead: Decimal = ZERO
    queue_trigger: str = ""
    created_at: dt.datetime | None = None
    new: bool = False

    @property
    def pk(self) -> uuid.UUID:
        return self.id

    @property
    def remaining(self) -> Decimal:
        return ZERO if self.size is None else self.size - self.filled_size


# --- rows appended --------------------------------------------------------------------------------
@dataclass(slots=True)
class FillRow:
    id: uuid.UUID
    seq: int
    epoch: int
    kind: str  # Fill.Kind: "fill" | "settlement"
    order_id: uuid.UUID | None
    token_id: str
    market_id: str
    market_question: str
    outcome: str
    side: str
    price: Decimal
    size: Decimal
    notional: Decimal
    fee: Decimal
    fee_rate_bps: Decimal | None
    liquidity: str | None
    realized_pnl: Decimal
    price_source: str
    book_as_of: dt.datetime | None
    book_hash: str
    levels: list[list[str]] | None
    vwap: Decimal | None
    mid_gap: Decimal | None
    trigger_key: str
    filled_at: dt.datetime


@dataclass(slots=True)
class LedgerRow:
    epoch: int
    kind: str
    amount: Decimal
    balance_after: Decimal
    order_id: uuid.UUID | None
    fill_id: uuid.UUID | None
    memo: str


@dataclass(slots=True)
class SnapshotRow:
    epoch: int
    at: dt.datetime
    equity: Decimal
    cash: Decimal
    positions_value: Decimal


@dataclass
class Effects:
    """Everything one event changed, for the writer: the account (always written), the
    orders and positions touched, and the rows appended."""

    account: AccountState
    now: dt.datetime
    orders: list[OrderState] = field(default_factory=list)
    positions: list[PositionState] = field(default_factory=list)
    fills: list[FillRow] = field(default_factory=list)
    ledger: list[LedgerRow] = field(default_factory=list)
    snapshot: SnapshotRow | None = None

    def touch_order(self, order: OrderState) -> None:
        if not any(o is order for o in self.orders):
            self.orders.append(order)

    def touch_position(self, position: PositionState) -> None:
        if not any(p is position for p in self.positions):
            self.positions.append(position)


# --- the evidence a fill carries ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Execution:
    """One fill of an order: `size` shares at `price`, with its taker `fee` (0 for a maker)."""

    price: Decimal
    size: Decimal
    fee: Decimal = ZERO

    @property
    def notional(self) -> Decimal:
        return self.price * self.size


@dataclass(frozen=True, slots=True)
class Evidence:
    """Where a fill's price came from, stored on each fill of one event: the book (its
    hash, time and the levels taken) or a trade print, and its distance from the mid."""

    liquidity: str  # TAKER | MAKER
    price_source: str  # "book" | "trade"
    book_as_of: dt.datetime | None
    book_hash: str
    levels: list[list[str]]
    mid: Decimal | None
    fee_rate_bps: Decimal | None = None


def ensure_tradable(*, status: str, tenant_enabled: bool) -> None:
    """Orders may be placed on an open account of an enabled firm (or a personal one):
    ACCOUNT_CLOSED, TENANT_DISABLED otherwise."""
    if status == CLOSED:
        raise errors.AccountClosed()
    if not tenant_enabled:
        raise errors.TenantDisabled()


# --- marks and equity -----------------------------------------------------------------------------
MARK_MAX_SPREAD = Decimal("0.10")


class Priced(Protocol):
    """What a position's mark needs of its token's top."""

    @property
    def best_bid(self) -> str | None: ...
    @property
    def best_ask(self) -> str | None: ...
    @property
    def last_trade_price(self) -> str | None: ...


def book_mark(top: Priced) -> tuple[Decimal, str] | None:
    """How Polymarket itself displays a price: the midpoint, or the last trade when the
    spread is wider than 0.10 (or a side is empty). None when the book offers neither."""
    if top.best_bid is not None and top.best_ask is not None:
        bid, ask = Decimal(top.best_bid), Decimal(top.best_ask)
        if ask - bid <= MARK_MAX_SPREAD:
            return (bid + ask) / 2, "mid"
    if top.last_trade_price:
        return Decimal(top.last_trade_price), "last_trade"
    return None


class Held(Protocol):
    @property
    def size(self) -> Decimal: ...
    @property
    def avg_price(self) -> Decimal: ...
    @property
    def last_mark(self) -> Decimal | None: ...


def mark_price(position: Held, top: Priced | None) -> Decimal:
    """The price a position is valued at: its book's mark, else its stored last mark, else
    its cost (never zero by default). trading.selectors labels where it came from."""
    if top is not None:
        priced = book_mark(top)
        if priced is not None:
            return priced[0]
    return position.last_mark if position.last_mark is not None else position.avg_price


def value_at(size: Decimal, price: Decimal) -> Decimal:
    """A holding's market value: size × price, at cash precision."""
    return cash(size * price)


def market_value(position: Held, top: Priced | None) -> Decimal:
    return value_at(position.size, mark_price(position, top))


def holdings_value(positions: Iterable[PositionState], tops: Mapping[str, Priced]) -> Decimal:
    """The market value of the positions that count in equity (open with shares)."""
    return sum(
        (market_value(p, tops.get(p.token_id)) for p in positions if p.valued),
        ZERO,
    )


def snapshot(fx: Effects, positions_value: Decimal) -> SnapshotRow:
    """Measure equity = cash + `positions_value` now and fold it into the account's extremes."""
    account = fx.account
    equity = account.cash + positions_value
    account.high_water_mark, account.max_drawdown, account.max_drawdown_pct = equity_extremes(
        account.high_water_mark, account.max_drawdown, account.max_drawdown_pct, equity
    )
    fx.snapshot = SnapshotRow(account.epoch, fx.now, equity, account.cash, positions_value)
    return fx.snapshot


# --- cash -----------------------------------------------------------------------------------------
def post(
    fx: Effects,
    kind: str,
    amount: Decimal,
    *,
    order_id: uuid.UUID | None = None,
    fill_id: uuid.UUID | None = None,
    memo: str = "",
) -> LedgerRow:
    """Append one signed cash movement to the ledger and move the account's cash. Refuses
    (VALIDATION_FAILED) a movement that would take available cash below zero."""
    account = fx.account
    amount, balance = cash_movement(account.cash, account.reserved_cash, amount)
    account.cash = balance
    row = LedgerRow(account.epoch, kind, amount, balance, order_id, fill_id, memo)
    fx.ledger.append(row)
    return row


# --- positions ------------------------------------------------------------------------------------
def _position_apply(
    position: PositionState, *, side: str, size: Decimal, notional: Decimal, fee: Decimal
) -> Decimal:
    """Fold one fill into the position and return the P&L it realizes: a BUY adds at cost
    (its fee is a realized cost; the average price excludes fees), a SELL releases its share
    of the cost basis pro rata and realizes the difference less its fee."""
    if side == BUY:
        position.size += size
        position.cost_basis += notional
        position.avg_price = (position.cost_basis / position.size).quantize(PRICE_QUANTUM)
        realized = -fee
    else:
        released = (
            position.cost_basis
            if size == position.size
            else cash(position.cost_basis * size / position.size)
        )
        realized = notional - released - fee
        position.size -= size
        position.cost_basis -= released
        if position.size == 0:
            position.avg_price = ZERO
            position.cost_basis = ZERO
    position.realized_pnl += realized
    return realized


def _append_fill(fx: Effects, row: FillRow) -> FillRow:
    """Number the fill after the account's last one; its time never before that one's."""
    account = fx.account
    account.last_fill_seq += 1
    row.seq = account.last_fill_seq
    if account.last_filled_at is not None and row.filled_at < account.last_filled_at:
        row.filled_at = account.last_filled_at
    account.last_filled_at = row.filled_at
    fx.fills.append(row)
    return row


def _count_trading_day(fx: Effects) -> None:
    account = fx.account
    day = trading_day(fx.now, *account.day_boundary)
    if account.last_trading_day != day:
        account.trading_days += 1
        account.last_trading_day = day


# --- reservations ---------------------------------------------------------------------------------
def reserve(fx: Effects, order: OrderState, position: PositionState | None, *, rate: Decimal,
            exponent: Decimal) -> None:  # fmt: skip
    """Reserve what a resting order's remainder may need: a BUY its notional at the limit
    plus the worst taker fee (the cushion), a SELL its shares."""
    remaining = order.remaining
    if order.side == BUY:
        order.reserved_cash = buy_reservation(
            price=order.price, size=remaining, rate=rate, exponent=exponent
        )
        fx.account.reserved_cash += order.reserved_cash
    else:
        assert position is not None  # a SELL only rests holding the shares
        order.reserved_shares = remaining
        position.reserved_size += remaining
        fx.touch_position(position)
    fx.touch_order(order)


def _release_part(order: OrderState, size: Decimal) -> Decimal:
    """Cash a BUY's reservation gives back when `size` of it fills: the notional at its limit
    plus the matching share of its fee cushion (floored, so what stays reserved always covers
    price × remaining); all of it on the last fill."""
    remaining = order.remaining
    if size >= remaining:
        return order.reserved_cash
    cushion = max(ZERO, order.reserved_cash - order.price * remaining)
    return order.price * size + (cushion * size / remaining).quantize(
        CASH_QUANTUM, rounding=ROUND_DOWN
    )


def release(
    fx: Effects, order: OrderState, position: PositionState | None, *, status: str, reason: str
) -> None:
    """An order leaves `live` (canceled, expired) and gives back exactly what it reserved."""
    states.ensure_transition(order.status, status)
    fx.account.reserved_cash -= order.reserved_cash
    if order.reserved_shares:
        assert position is not None
        position.reserved_size -= order.reserved_shares
        fx.touch_position(position)
    order.status = status
    order.reason = reason
    order.reserved_cash = ZERO
    order.reserved_shares = ZERO
    fx.touch_order(order)


# --- fills ----------------------------------------------------------------------------------------
def fill(
    fx: Effects,
    order: OrderState,
    position: PositionState,
    executions: list[Execution],
    evidence: Evidence,
    *,
    trigger_keys: list[str],
    labels: tuple[str, str],
) -> list[FillRow]:
    """Apply executions of `order` to the account, in order. A taker order at entry has
    reserved nothing yet; a resting (maker) order releases its reservation as it fills and
    becomes `matched` on its last hundredth. `labels`: the market's question and the token's
    outcome, as the fills show them. Returns the fill rows appended."""
    account = fx.account
    resting = order.status == states.LIVE and not order.new
    total = sum((e.size for e in executions), ZERO)
    vwap = sum((e.notional for e in executions), ZERO) / total if total else None
    vwap_q = vwap.quantize(PRICE_QUANTUM, rounding=ROUND_HALF_EVEN) if vwap is not None else None
    mid_gap = None
    if evidence.mid is not None and vwap is not None:
        gap = vwap - evidence.mid if order.side == BUY else evidence.mid - vwap
        mid_gap = gap.quantize(PRICE_QUANTUM, rounding=ROUND_HALF_EVEN)
    rows = []
    for execution, trigger_key in zip(executions, trigger_keys, strict=True):
        size, notional, fee = execution.size, execution.notional, execution.fee
        if resting:
            if order.side == BUY:
                released = _release_part(order, size)
                order.reserved_cash -= released
                account.reserved_cash -= released  # before the cash leaves
            else:
                order.reserved_shares -= size
                position.reserved_size -= size
        realized = _position_apply(position, side=order.side, size=size, notional=notional, fee=fee)
        order.filled_size += size
        order.filled_notional += notional
        order.fees_paid += fee
        account.realized_pnl += realized
        account.fees_paid += fee
        maker = evidence.liquidity == MAKER
        row = _append_fill(
            fx,
            FillRow(
                id=uuid.uuid4(),
                seq=0,
                epoch=account.epoch,
                kind="fill",
                order_id=order.id,
                token_id=order.token_id,
                market_id=order.market_id,
                market_question=labels[0],
                outcome=labels[1],
                side=order.side,
                price=execution.price,
                size=size,
                notional=notional,
                fee=fee,
                fee_rate_bps=evidence.fee_rate_bps,
                liquidity=evidence.liquidity,
                realized_pnl=realized,
                price_source=evidence.price_source,
                book_as_of=evidence.book_as_of,
                book_hash=evidence.book_hash,
                levels=evidence.levels,
                vwap=vwap_q,
                mid_gap=mid_gap,
                trigger_key=trigger_key,
                filled_at=fx.now,
            ),
        )
        sign = -1 if order.side == BUY else 1
        memo = f"{order.side} {size} @ {execution.price}" + (" (maker)" if maker else "")
        post(fx, TRADE, sign * notional, order_id=order.id, fill_id=row.id, memo=memo)
        if fee:
            post(fx, FEE, -fee, order_id=order.id, fill_id=row.id, memo="taker fee")
        rows.append(row)
    if resting:
        target = states.MATCHED if order.remaining <= 0 else states.LIVE
        states.ensure_transition(order.status, target)
        order.status = target
        if target == states.MATCHED:  # the last hundredth releases exactly what is left
            position.reserved_size -= order.reserved_shares
            order.reserved_shares = ZERO
            account.reserved_cash -= order.reserved_cash
            order.reserved_cash = ZERO
    if rows:
        _count_trading_day(fx)
    fx.touch_order(order)
    fx.touch_position(position)
    return rows


def settle(
    fx: Effects, position: PositionState, price: Decimal, *, trigger_key: str
) -> FillRow | None:
    """Pay `size × price` for a position at its market's resolution: a SETTLEMENT ledger
    entry and a settlement fill (SELL at the final price, no fee, realized = payout − cost);
    the position becomes `settled` with no shares. A position already at size 0 just
    becomes `settled`, with no fill and no cash. Not a trading day."""
    row = None
    if position.size > 0:
        payout = cash(position.size * price)
        realized = payout - position.cost_basis
        row = _append_fill(
            fx,
            FillRow(
                id=uuid.uuid4(),
                seq=0,
                epoch=fx.account.epoch,
                kind="settlement",
                order_id=None,
                token_id=position.token_id,
                market_id=position.market_id,
                market_question=position.market_question,
                outcome=position.outcome,
                side=SELL,
                price=price,
                size=position.size,
                notional=payout,
                fee=ZERO,
                fee_rate_bps=None,
                liquidity=None,
                realized_pnl=realized,
                price_source="resolution",
                book_as_of=None,
                book_hash="",
                levels=[],
                vwap=None,
                mid_gap=None,
                trigger_key=trigger_key,
                filled_at=fx.now,
            ),
        )
        memo = f"settle {position.size} {position.outcome or position.token_id} @ {price}"
        post(fx, SETTLEMENT, payout, fill_id=row.id, memo=memo)
        position.realized_pnl += realized
        fx.account.realized_pnl += realized
    position.status = SETTLED
    position.size = ZERO
    position.reserved_size = ZERO
    position.cost_basis = ZERO
    position.avg_price = ZERO
    fx.touch_position(position)
    return row


def day_boundary_of(tz: str | None, at: Any) -> tuple[str, dt.time]:
    """A tenant's trading-day boundary as the engine takes it (UTC midnight without one)."""
    if tz is None or at is None:
        return UTC_MIDNIGHT
    if isinstance(at, dt.time):
        return tz, at
    return tz, dt.time.fromisoformat(str(at))
