"""Cancels and expiry: an order leaves `live` and releases exactly what it reserved — cash on
the account (BUY), shares on the position (SELL). Every path takes the account row lock first
and then the order rows (C1); status changes go through trading.states.ensure_transition.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import Account, Position
from accounts.services.wallets import account_lock
from core import errors
from core.db import retry_on_conflict
from core.money import ZERO
from marketdata import states as market_states
from marketdata.models import Market
from trading import states
from trading.models import Order
from trading.orderevents import order_events_publish_on_commit


def release_orders(*, account: Account, orders: list[Order], status: str, reason: str) -> int:
    """Move live orders to `status` (canceled/expired) and release their reservations.
    Caller holds the account lock and has locked the order rows. Returns how many changed."""
    if not orders:
        return 0
    now = timezone.now()
    released_cash = ZERO
    for order in orders:
        states.ensure_transition(order.status, status)
        released_cash += order.reserved_cash
        if order.reserved_shares:
            Position.objects.filter(
                account=account, token_id=order.token_id, epoch=order.epoch
            ).update(reserved_size=F("reserved_size") - order.reserved_shares)
        order.status = status
        order.reason = reason
        order.reserved_cash = ZERO
        order.reserved_shares = ZERO
    Order.objects.filter(pk__in=[o.pk for o in orders]).update(
        status=status, reason=reason, reserved_cash=ZERO, reserved_shares=ZERO, updated_at=now
    )
    if released_cash:
        account.reserved_cash -= released_cash
        Account.objects.filter(pk=account.pk).update(
            reserved_cash=account.reserved_cash, updated_at=now
        )
    order_events_publish_on_commit(orders)  # the maker matchers drop them from their index
    return len(orders)


def _live(account: Account, **filters: Any) -> list[Order]:
    return list(
        Order.objects.select_for_update()
        .filter(account=account, status=Order.Status.LIVE, **filters)
        .order_by("pk")
    )


def order_cancel_all(*, account: Account, reason: str) -> int:
    """Cancel every live order of the account, releasing exactly what each reserved (cash on
    the account, shares on the position). Caller holds the account lock. Returns how many
    orders were cancelled."""
    return release_orders(
        account=account, orders=_live(account), status=states.CANCELED, reason=reason
    )


@retry_on_conflict()
@transaction.atomic
def order_cancel(*, account_id: Any, order_id: Any, reason: str = "USER") -> Order:
    """Cancel one order of the account. Takes the account row lock, then the order row.
    Idempotent for cancels: an already-canceled order is returned unchanged; a matched,
    expired or rejected order raises ILLEGAL_TRANSITION; another account's order NOT_FOUND."""
    account = account_lock(account_id=account_id)
    order = Order.objects.select_for_update().filter(account=account, pk=order_id).first()
    if order is None:
        raise errors.NotFound("No such order on this account.")
    if order.status == Order.Status.CANCELED:
        return order
    release_orders(account=account, orders=[order], status=states.CANCELED, reason=reason)
    return order


@retry_on_conflict()
@transaction.atomic
def order_cancel_market(*, account_id: Any, market_id: str, reason: str = "USER") -> int:
    """Cancel the account's live orders in one market (condition id). Takes the account row
    lock. Returns how many were cancelled (0 is not an error: idempotent)."""
    account = account_lock(account_id=account_id)
    orders = _live(account, market_id=market_id)
    return release_orders(account=account, orders=orders, status=states.CANCELED, reason=reason)


@retry_on_conflict()
@transaction.atomic
def order_cancel_account(*, account_id: Any, reason: str = "USER") -> int:
    """Cancel every live order of the account. Takes the account row lock (order_cancel_all
    expects its caller to hold it). Idempotent: a second run cancels nothing and returns 0."""
    return order_cancel_all(account=account_lock(account_id=account_id), reason=reason)


@retry_on_conflict()
@transaction.atomic
def _expire_account(*, account_id: Any, now: dt.datetime) -> int:
    account = account_lock(account_id=account_id)
    orders = _live(
        account, time_in_force=Order.TimeInForce.GTD, expiration__isnull=False, expiration__lte=now
    )
    return release_orders(account=account, orders=orders, status=states.EXPIRED, reason="EXPIRED")


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
