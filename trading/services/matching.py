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
position row (the order of every other path, C1); one transaction per trigger and order,
retried on deadlock/serialization failure.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Account, LedgerEntry, Position
from accounts.services.wallets import equity_snapshot_record, ledger_post
from core import errors
from core.clock import trading_day
from core.db import retry_on_conflict
from core.money import CASH_QUANTUM, ZERO
from marketdata import states as market_states
from marketdata.bus import BookTop, TradePrint
from marketdata.models import Token
from trading import states
from trading.depletion import Take, get_depletion_store, level_key, memories
from trading.fillmodel import crosses, walk_book
from trading.models import Fill, Order, Side
from trading.selectors import open_positions
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


def _locked(order_id: Any, account_id: Any) -> tuple[Account, Order, Token] | MakerResult:
    """Account lock, then the order row lock; `gone` unless the order (of that account)
    still rests and may trade (live, its epoch, an open market accepting orders, not past
    its GTD expiration)."""
    account = Account.objects.select_for_update().filter(pk=account_id).first()
    if account is None:
        return MakerResult("gone", ZERO, ZERO, ZERO)
    order = Order.objects.select_for_update().filter(pk=order_id, account_id=account.pk).first()
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
    token = Token.objects.select_related("market").filter(token_id=order.token_id).first()
    market = token.market if token else None
    if (
        token is None
        or market is None
        or market.closed
        or market.status != market_states.OPEN
        or not market.accepting_orders
    ):
        return MakerResult("gone", ZERO, _remaining(order), order.queue_ahead)
    return account, order, token


def _duplicate(order: Order, trigger_key: str) -> MakerResult | None:
    if Fill.objects.filter(trigger_key=trigger_key).exists():
        return MakerResult("duplicate", ZERO, _remaining(order), order.queue_ahead)
    return None


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
    got = _locked(order_id, account_id)
    if isinstance(got, MakerResult):
        return got
    account, order, token = got
    dup = _duplicate(order, trigger_key)
    if dup is not None:
        return dup
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
        account=account,
        order=order,
        token=token,
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
    got = _locked(order_id, account_id)
    if isinstance(got, MakerResult):
        return got
    account, order, token = got
    dup = _duplicate(order, trigger_key)
    if dup is not None:
        return dup
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
        account=account,
        order=order,
        token=token,
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
    *,
    account: Account,
    order: Order,
    token: Token,
    size: Decimal,
    trigger_key: str,
    price_source: str,
    top: BookTop | None,
    levels: list[list[str]],
    trade: TradePrint | None = None,
) -> Fill:
    """Move the money of one maker fill. Caller holds the account and order row locks."""
    now = timezone.now()
    market = token.market
    price = order.price
    notional = price * size
    position = (
        Position.objects.select_for_update()
        .filter(account=account, token_id=order.token_id, epoch=order.epoch)
        .first()
    )
    if position is None:
        if order.side == Side.SELL:  # a live SELL always has its reserved position
            raise IntegrityError(f"live SELL {order.pk} has no position")
        position = Position.objects.create(
            account=account,
            epoch=order.epoch,
            token_id=order.token_id,
            market_id=market.condition_id,
            market_question=market.question,
            outcome=token.outcome,
            opened_at=now,
        )
    if order.side == Side.BUY:
        release = _release_buy(order, size)
        order.reserved_cash -= release
        account.reserved_cash -= release  # before the cash leaves: available never dips
    else:
        order.reserved_shares -= size
        position.reserved_size -= size
    realized = position_apply(position, side=order.side, size=size, notional=notional, fee=ZERO)
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
        market_question=market.question,
        outcome=token.outcome,
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
    )
    fills_append(account=account, fills=[fill])

    order.filled_size += size
    order.filled_notional += notional
    target = states.MATCHED if _remaining(order) <= 0 else states.LIVE
    states.ensure_transition(order.status, target)
    order.status = target
    if target == states.MATCHED:
        # A SELL's last hundredth releases exactly what is left reserved.
        if order.reserved_shares:
            position.reserved_size -= order.reserved_shares
            Position.objects.filter(pk=position.pk).update(reserved_size=position.reserved_size)
            order.reserved_shares = ZERO
        order.reserved_cash = ZERO
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
    updates: dict[str, Any] = {
        "reserved_cash": account.reserved_cash,
        "realized_pnl": account.realized_pnl,
        "last_fill_seq": account.last_fill_seq,
        "updated_at": now,
    }
    day = _trading_day(account, now)
    if account.last_trading_day != day:
        account.trading_days += 1
        account.last_trading_day = day
        updates.update(trading_days=account.trading_days, last_trading_day=day)
    Account.objects.filter(pk=account.pk).update(**updates)
    positions_value = sum((m.market_value for m in open_positions(account=account)), ZERO)
    equity_snapshot_record(account=account, positions_value=positions_value, at=now)
    return fill


def _trading_day(account: Account, now: dt.datetime) -> dt.date:
    if account.tenant_id is None:
        return trading_day(now, "UTC", dt.time(0, 0))
    tenant = account.tenant
    assert tenant is not None
    return trading_day(now, tenant.day_boundary_tz, tenant.day_boundary_time)
