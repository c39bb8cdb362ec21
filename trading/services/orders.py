"""Order placement: the quote, the taker fills at entry, and the rest of the order resting or
cancelled (docs/fill-model.md, docs/engine-rules.md).

Path of one order:
  1. Shape checks (trading.quote.order_request; no I/O) — for the trader API (`owner`),
     after its account checks.
  2. ONE read of the token's top from the price bus (`latest_live`: the top and its shard's
     feed heartbeat), before the lock.
  3. One transaction under the account row lock (retried on deadlock/serialization),
     opened by ONE round trip (trading.store.lock): the account with its tenant, its
     positions, the token with its market and the client_order_id twin. Then: for the
     trader API NOT_FOUND (not theirs), ACCOUNT_CLOSED and TENANT_DISABLED, then the shape;
     the token, the account, the client_order_id replay, ACCOUNT_CLOSED, then the market
     checks (trading.quote.market_checks).
  4. Still under the lock: the quote (balance or position, post-only, the walk, FOK) of what
     depletion leaves of the crossing levels, taken with a compare-and-set
     (trading.depletion.take_levels; its records read with the positions' marks in one
     Redis round trip); the engine (trading.engine) applies the fills and reserves the
     resting remainder, and trading.store writes everything in ONE round trip.

Refusals of steps 1–3 store nothing. Those of step 4 (trading.quote.STORED_REJECTIONS) are
stored as an Order with status `rejected` and `reason` = the code (committed, then raised), so
a retry with the same client_order_id raises the same error again instead of trading.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from core import errors
from core.clock import from_ms
from core.db import retry_on_conflict
from marketdata.bus import BookTop, get_bus
from trading import engine, states, store
from trading.depletion import level_keys, take_levels
from trading.engine import Effects, Evidence, Execution, OrderState, PositionState
from trading.models import Fill, Order
from trading.orderevents import order_events_publish_on_commit
from trading.quote import (
    STORED_REJECTIONS,
    OrderRequest,
    Quote,
    crossing_levels,
    market_checks,
    order_request,
    queue_ahead_at,
    quote,
)

__all__ = ["STORED_REJECTIONS", "PlacedOrder", "order_place", "order_request"]


@dataclass(frozen=True)
class PlacedOrder:
    order: Order
    fills: list[Fill]
    created: bool


@dataclass
class _Outcome:
    placed: PlacedOrder | None = None
    error: errors.DomainError | None = None


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
    locked: store.Locked,
    req: OrderRequest | Callable[[], OrderRequest],
    top: BookTop | None,
    live: bool,
    owner: Any,
) -> OrderRequest | _Outcome:
    """The checks nothing is stored for, in their order (see the module docstring); the
    outcome of a client_order_id replay."""
    account = locked.account
    if owner is not None:
        if account is None:
            raise errors.NotFound()
        engine.ensure_tradable(status=account.status, tenant_enabled=locked.tenant_enabled)
    if not isinstance(req, OrderRequest):
        req = req()
    if locked.market is None:
        raise errors.ValidationFailed(details={"token_id": ["unknown token"]})
    if account is None:
        raise errors.NotFound("No such account.")
    if locked.replay_of is not None:
        try:
            return _Outcome(placed=_replay(Order.objects.get(pk=locked.replay_of), req))
        except errors.DomainError as exc:
            return _Outcome(error=exc)
    if account.status == engine.CLOSED:
        raise errors.AccountClosed()
    return market_checks(req, locked.market, top, live)


def _new_order(locked: store.Locked, req: OrderRequest, now: dt.datetime) -> OrderState:
    account, market = locked.account, locked.market
    assert account is not None and market is not None and req.price is not None
    return OrderState(
        id=uuid.uuid4(),
        account_id=account.id,
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
        status=states.LIVE,
        created_at=now,
        new=True,
    )


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
    locked = store.lock(
        account_id,
        owner_id=None if owner is None else owner.pk,
        token_id=token_id if isinstance(token_id, str) else "",
        client_order_id=client_order_id if isinstance(client_order_id, str) else None,
    )
    checked = _checked(locked, req, top, live, owner)
    if isinstance(checked, _Outcome):  # a replay of client_order_id
        return checked
    req = checked
    account, market = locked.account, locked.market
    assert account is not None and market is not None and top is not None
    now = timezone.now()
    fx = Effects(account, now)
    order = _new_order(locked, req, now)
    position = locked.position(req.token_id)
    others = locked.others(req.token_id)
    free = position.free if position is not None else Decimal(0)

    def priced(taken: list[Decimal]) -> tuple[Quote, list[tuple[Decimal, Decimal]]]:
        q = quote(
            req, market, top, live=live, available_cash=account.available_cash,
            free_shares=free, taken=taken,
        )  # fmt: skip
        return q, [(t.price, t.size) for t in q.walk.takes]

    crossing = crossing_levels(top, req)
    book_side = "asks" if req.is_buy else "bids"
    marks: dict[str, BookTop] | None = None
    raws: list[str] | None = None
    keys = level_keys(top, book_side, len(crossing))
    if crossing and not req.post_only and live:
        # The positions' marks (for the equity snapshot) with the depletion records: one read.
        marks, blobs = get_bus().latest_many_live_and_get(
            [*(p.token_id for p in others), req.token_id], keys
        )
        raws = ["" if r is None else r.decode() for r in blobs]
    q, _ = take_levels(keys, crossing, priced, raws=raws)
    if q.error is not None:
        if not q.stored:
            raise q.error
        order.status, order.reason = states.REJECTED, q.error.code
        fx.touch_order(order)
        store.write(fx, account=False)
        return _Outcome(error=q.error)

    order.queue_ahead = queue_ahead_at(top, req.side, order.price)
    walk = q.walk
    fills = []
    if walk.takes:
        if position is None:
            position = PositionState(
                None, req.token_id, market.condition_id, market.question, market.outcome
            )
        evidence = Evidence(
            liquidity=engine.TAKER,
            price_source="book",
            book_as_of=from_ms(top.timestamp_ms),
            book_hash=top.hash,
            levels=[[str(t.price), str(t.size)] for t in walk.takes],
            mid=top.mid_value(),
            fee_rate_bps=q.rate * 10000,
        )
        fills = engine.fill(
            fx,
            order,
            position,
            [Execution(t.price, t.size, t.fee) for t in walk.takes],
            evidence,
            trigger_keys=[f"taker:{order.id}:{n}" for n in range(1, len(walk.takes) + 1)],
            labels=(market.question, market.outcome),
        )
    _finish(fx, order, position, q)
    if fills:
        if marks is None:
            marks = get_bus().latest_many_live([*(p.token_id for p in others), req.token_id])
        assert position is not None
        engine.snapshot(fx, engine.holdings_value([*others, position], marks))
    store.write(fx)
    if order.status == states.LIVE:  # it rests: the maker matchers index it
        order_events_publish_on_commit([order])
    return _Outcome(
        placed=PlacedOrder(
            store.order_model(order, at=now),
            [store.fill_model(f, account.id) for f in fills],
            created=True,
        )
    )


def _finish(fx: Effects, order: OrderState, position: PositionState | None, q: Quote) -> None:
    """The order's status at entry: matched when it got everything; a FOK/FAK remainder is
    cancelled; a GTC/GTD remainder rests at its limit with its reservation."""
    walk = q.walk
    done = walk.complete if order.amount is not None else order.remaining == 0
    if done:
        target, reason = states.MATCHED, ""
    elif not q.req.rests:
        target, reason = states.CANCELED, "FAK_REMAINDER"
    else:
        target, reason = states.LIVE, ""
        engine.reserve(fx, order, position, rate=q.rate, exponent=q.exponent)
    states.ensure_transition(order.status, target)
    order.status, order.reason = target, reason
    fx.touch_order(order)
