"""Cancels and expiry: an order leaves `live` and releases exactly what it reserved — cash on
the account (BUY), shares on the position (SELL). Every path locks the account row first, then
the order rows, then the positions (trading.store.lock, in one round trip); the effects are
the engine's (trading.engine.release) and the writer's.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import transaction
from django.utils import timezone

from core import errors
from core.db import retry_on_conflict
from marketdata import states as market_states
from marketdata.models import Market
from trading import engine, states, store
from trading.engine import Effects, OrderState
from trading.models import Order
from trading.orderevents import order_events_publish_on_commit


def _release(
    account_id: Any, *, status: str, reason: str, **which: Any
) -> tuple[store.Locked, list[OrderState]]:
    """Lock the account and the orders `which` selects (trading.store.lock's arguments),
    move the live ones to `status` and give back exactly what each reserved, in this
    transaction. Returns what was locked and the orders that changed."""
    locked = store.lock(account_id, **which)
    if locked.account is None:
        return locked, []
    live = [o for o in locked.orders or [] if o.status == states.LIVE]
    if live:
        fx = Effects(locked.account, timezone.now())
        for order in live:
            engine.release(fx, order, locked.position(order.token_id), status=status, reason=reason)
        store.write(fx)
        order_events_publish_on_commit(live)  # the maker matchers drop them from their index
    return locked, live


def order_cancel_all(*, account_id: Any, reason: str) -> int:
    """Cancel every live order of the account, releasing exactly what each reserved (cash on
    the account, shares on the position), in the caller's transaction. Returns how many
    orders were cancelled."""
    return len(
        _release(account_id, orders="live", positions=True, status=states.CANCELED, reason=reason)[
            1
        ]
    )


@retry_on_conflict()
@transaction.atomic
def order_cancel(*, account_id: Any, order_id: Any, reason: str = "USER") -> Order:
    """Cancel one order of the account. Takes the account row lock, then the order row.
    Idempotent for cancels: an already-canceled order is returned unchanged; a matched,
    expired or rejected order raises ILLEGAL_TRANSITION; another account's order NOT_FOUND."""
    locked = store.lock(account_id, order_id=order_id)
    if locked.account is None or not locked.orders:
        raise errors.NotFound("No such order on this account.")
    order = locked.orders[0]
    if order.status != states.CANCELED:
        fx = Effects(locked.account, timezone.now())
        engine.release(
            fx, order, locked.position(order.token_id), status=states.CANCELED, reason=reason
        )
        store.write(fx)
        order_events_publish_on_commit([order])
        return store.order_model(order, at=fx.now)
    return Order.objects.get(pk=order.id)


@retry_on_conflict()
@transaction.atomic
def order_cancel_market(*, account_id: Any, market_id: str, reason: str = "USER") -> int:
    """Cancel the account's live orders in one market (condition id). Takes the account row
    lock. Returns how many were cancelled (0 is not an error: idempotent)."""
    return len(
        _release(
            account_id,
            orders="market",
            orders_arg=market_id,
            positions=True,
            status=states.CANCELED,
            reason=reason,
        )[1]
    )


@retry_on_conflict()
@transaction.atomic
def order_cancel_account(*, account_id: Any, reason: str = "USER") -> int:
    """Cancel every live order of the account. Takes the account row lock. Idempotent: a
    second run cancels nothing and returns 0."""
    return order_cancel_all(account_id=account_id, reason=reason)


@retry_on_conflict()
@transaction.atomic
def _expire_account(*, account_id: Any, now: dt.datetime) -> int:
    return len(
        _release(
            account_id,
            orders="expired",
            orders_arg=now,
            positions=True,
            status=states.EXPIRED,
            reason="EXPIRED",
        )[1]
    )


# Why a resting order left the book when its market stopped trading (closed, resolved, void or
# ambiguous); settlement uses the same reason for the orders it finds.
MARKET_HALTED_REASON = "MARKET_RESOLVED"


def orders_cancel_halted(*, market_ids: list[str] | None = None) -> int:
    """Cancel every live order in a market that no longer trades (status closed, resolved,
    void or ambiguous), releasing its reservations, reason MARKET_RESOLVED; `market_ids`
    narrows it to those markets (condition ids). One transaction per account and market, each
    under the account row lock; idempotent, so the signal path and the beat sweep may both run
    it. Returns how many orders were cancelled."""
    halted = Market.objects.filter(status__in=sorted(market_states.HALTED))
    if market_ids is not None:
        halted = halted.filter(condition_id__in=market_ids)
    pairs = sorted(
        set(
            Order.objects.filter(
                status=Order.Status.LIVE,
                market_id__in=halted.values("condition_id"),
            ).values_list("account_id", "market_id")
        )
    )
    return sum(
        order_cancel_market(account_id=account_id, market_id=market_id, reason=MARKET_HALTED_REASON)
        for account_id, market_id in pairs
    )


def orders_expire(*, now: dt.datetime | None = None) -> int:
    """Expire every live GTD order whose expiration is ≤ now, releasing exactly what each
    reserved. One transaction per account, accounts in primary-key order, each under its row
    lock; re-checks under the lock, so running it twice (or concurrently) expires nothing
    twice. Returns how many orders expired."""
    now = now or timezone.now()
    account_ids = sorted(
        set(
            Order.objects.filter(
                status=Order.Status.LIVE,
                time_in_force=Order.TimeInForce.GTD,
                expiration__lte=now,
            ).values_list("account_id", flat=True)
        )
    )
    return sum(_expire_account(account_id=a, now=now) for a in account_ids)
