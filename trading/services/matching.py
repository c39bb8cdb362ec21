"""Maker fills: a resting order fills at its own limit price, as maker, with no fee, when the
live market reaches it (docs/fill-model.md "Maker fills").

Two triggers, each one service, called by the matcher (trading.matcher) per crossing order:
* `order_fill_maker_cross`: the opposite best crosses the order; it takes what the crossing
  levels show, less depletion (shared with taker fills through
  trading.depletion.take_levels: the same shown shares are never consumed twice), best
  level first.
* `order_fill_maker_trade`: a trade printed through the order's price (fills up to the
  trade's size, shared across orders by the matcher), or at exactly its price once the size
  queued ahead of it when it arrived has traded (`Order.queue_ahead`).

Both are exactly-once per trigger: `trigger_key` is the bus entry + item + order, checked
under the account row lock before anything moves and backed by the unique `Fill.trigger_key`;
queue advances carry the trigger in `Order.queue_trigger` (sortable, so a replay of an older
print is not counted twice). One transaction per trigger and order, retried on deadlock or
serialization failure: trading.store locks and reads the account, the order and the
positions in one round trip, trading.engine applies the fill, trading.store writes it in one
round trip. The fill is on the matcher's critical path (p99 from book update to committed
fill < 100 ms; docs/benchmarks.md).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from core.clock import from_ms
from core.db import retry_on_conflict
from core.money import SHARE_QUANTUM, ZERO
from marketdata.bus import BookTop, TradePrint, get_bus
from trading import engine, states, store
from trading.depletion import level_keys, take_levels
from trading.engine import Effects, Evidence, Execution, OrderState, PositionState
from trading.fillmodel import crosses, walk_book
from trading.quote import market_open


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


@dataclass(frozen=True)
class _Resting:
    """A resting order that may trade, read under the row locks."""

    locked: store.Locked
    order: OrderState
    position: PositionState | None

    def result(self, outcome: str) -> MakerResult:
        return MakerResult(outcome, ZERO, self.order.remaining, self.order.queue_ahead)


def _resting(order_id: Any, account_id: Any, trigger_key: str) -> _Resting | MakerResult:
    """Lock the account, the order and the positions; `gone` unless the order (of that
    account) still rests and may trade (live, its epoch, an open market accepting orders,
    not past its GTD expiration); `duplicate` if `trigger_key` was already applied (read
    after the account lock: every fill of the account commits under it)."""
    gone = MakerResult("gone", ZERO, ZERO, ZERO)
    locked = store.lock(account_id, order_id=order_id, market=True, trigger_key=trigger_key)
    account = locked.account
    if account is None or not locked.orders:
        return gone
    order = locked.orders[0]
    if (
        order.status != states.LIVE
        or order.size is None
        or order.remaining <= 0
        or account.status == engine.CLOSED
        or order.epoch != account.epoch
        or (order.expiration is not None and order.expiration <= timezone.now())
    ):
        return gone
    resting = _Resting(locked, order, locked.position(order.token_id))
    if locked.market is None or not market_open(locked.market):
        return resting.result("gone")
    if locked.duplicate:
        return resting.result("duplicate")
    return resting


@retry_on_conflict()
@transaction.atomic
def order_fill_maker_cross(
    *, order_id: Any, account_id: Any, trigger_key: str, top: BookTop
) -> MakerResult:
    """Fill a resting order that the opposite best of `top` crosses, at its own limit price,
    for what the crossing levels show less depletion, up to its remaining size.

    `account_id` is the order's account (from the matcher's index; an order of another
    account is `gone`). The caller checked that `top` is fresh (live) and newer than the
    order. Depletion is taken with its compare-and-set while the rows are held, so a cancel
    racing this fill either wins (the order is gone, nothing taken) or waits. Idempotent per
    `trigger_key` (a replayed bus entry fills nothing)."""
    got = _resting(order_id, account_id, trigger_key)
    if isinstance(got, MakerResult):
        return got
    order = got.order
    remaining = order.remaining
    crossing: list[tuple[Decimal, Decimal]] = []
    for p, s in top.asks if order.side == engine.BUY else top.bids:
        price = Decimal(p)
        if not crosses(order.side, price, order.price):
            break
        crossing.append((price, Decimal(s)))
    if not crossing:
        return got.result("none")

    def plan(taken: list[Decimal]) -> tuple[Any, list[tuple[Decimal, Decimal]]]:
        walk = walk_book(
            side=order.side,
            levels=[(p, s, s - t) for (p, s), t in zip(crossing, taken, strict=True)],
            limit=order.price,
            size=remaining,
        )
        return walk, [(t.price, t.size) for t in walk.takes]

    # The first plan assumes that no crossing level has a depletion record (the common case:
    # simulated takers seldom took from exactly these levels in these versions), and its
    # compare-and-set checks that, reading the positions' marks in the same command.
    valued = _valued_tokens(got)
    walk, blobs = take_levels(
        level_keys(top, "asks" if order.side == engine.BUY else "bids", len(crossing)),
        crossing,
        plan,
        raws=[""] * len(crossing),
        get=[get_bus().book_key(t) for t in valued],
    )
    if not walk.takes:
        return got.result("none")
    marks = {t: BookTop.from_json(b) for t, b in zip(valued, blobs, strict=False) if b}
    evidence = Evidence(
        liquidity=engine.MAKER,
        price_source="book",
        book_as_of=from_ms(top.timestamp_ms),
        book_hash=top.hash,
        levels=[[str(t.price), str(t.size)] for t in walk.takes],
        mid=top.mid_value(),
        fee_rate_bps=ZERO,
    )
    fill_id = _apply(got, walk.filled, evidence, trigger_key, marks if blobs else None)
    return MakerResult("filled", walk.filled, order.remaining, order.queue_ahead, fill_id)


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
    got = _resting(order_id, account_id, trigger_key)
    if isinstance(got, MakerResult):
        return got
    order = got.order
    price = trade.price_value()
    at_price = price == order.price
    take = min(order.remaining, available)
    if at_price:
        if order.queue_trigger and order.queue_trigger >= queue_trigger:
            return got.result("duplicate")
        beyond = trade.size_value() - order.queue_ahead
        order.queue_ahead = max(ZERO, order.queue_ahead - trade.size_value())
        order.queue_trigger = queue_trigger
        take = min(take, max(ZERO, beyond))
    elif not crosses(order.side, price, order.price):
        return got.result("none")
    take = take.quantize(SHARE_QUANTUM, rounding=ROUND_DOWN)
    if take <= 0:
        if at_price:  # the queue advance alone
            fx = Effects(got.locked.account, timezone.now())  # type: ignore[arg-type]
            fx.touch_order(order)
            store.write(fx, account=False)
        return got.result("none")
    evidence = Evidence(
        liquidity=engine.MAKER,
        price_source="trade",
        book_as_of=from_ms(trade.timestamp_ms),
        book_hash="",
        levels=[[trade.price, str(take)]],
        mid=top.mid_value() if top is not None else None,
        fee_rate_bps=ZERO,
    )
    fill_id = _apply(got, take, evidence, trigger_key, None)
    return MakerResult("filled", take, order.remaining, order.queue_ahead, fill_id)


def _valued_tokens(resting: _Resting) -> list[str]:
    """The tokens whose marks the fill's equity snapshot may need: the order's (its position
    after the fill) and the account's other open positions'."""
    token = resting.order.token_id
    return [token, *(p.token_id for p in resting.locked.others(token))]


def _apply(
    resting: _Resting,
    size: Decimal,
    evidence: Evidence,
    trigger_key: str,
    marks: dict[str, BookTop] | None,
) -> uuid.UUID:
    """One maker fill of `size` at the order's limit, through the engine, with the equity
    snapshot after it (`marks`: the positions' tops if the caller read them already), and
    the writer. Returns the fill's id."""
    locked, order = resting.locked, resting.order
    assert locked.account is not None and locked.market is not None
    position = resting.position
    if position is None:
        if order.side == engine.SELL:  # a live SELL always has its reserved position
            raise IntegrityError(f"live SELL {order.id} has no position")
        market = locked.market
        position = PositionState(
            None, order.token_id, market.condition_id, market.question, market.outcome
        )
    fx = Effects(locked.account, timezone.now())
    (row,) = engine.fill(
        fx,
        order,
        position,
        [Execution(order.price, size)],
        evidence,
        trigger_keys=[trigger_key],
        labels=(locked.market.question, locked.market.outcome),
    )
    held = [position, *locked.others(order.token_id)]
    if marks is None:
        marks = get_bus().latest_many([p.token_id for p in held if p.valued])
    engine.snapshot(fx, engine.holdings_value(held, marks))
    store.write(fx)
    return row.id
