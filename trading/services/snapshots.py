"""Equity measured each minute for accounts holding positions (docs/engine-rules.md §6), so the
high-water mark, max drawdown and day-start equity follow prices between fills."""

from __future__ import annotations

from decimal import Decimal

from django.db import transaction

from accounts.models import Account, Position
from accounts.services.wallets import account_lock, equity_snapshot_record
from core.db import retry_on_conflict
from core.money import ZERO
from trading.selectors import open_positions


@retry_on_conflict()
@transaction.atomic
def account_equity_measure(*, account_id: object) -> Decimal | None:
    """Snapshot one account's equity at current marks; returns it, or None for a closed
    account (sealed: its HWM and drawdown no longer move). Takes the account row lock, as
    every writer of the cached HWM/drawdown does. Safe to repeat: each call only appends a
    snapshot and folds it into the epoch's extremes."""
    account = account_lock(account_id=account_id)
    if account.is_closed:
        return None
    marked = open_positions(account=account)
    positions_value = sum((m.market_value for m in marked), ZERO)
    return equity_snapshot_record(account=account, positions_value=positions_value).equity


def equity_snapshots_take() -> int:
    """Measure every active account holding an open position, one transaction each, in
    primary-key order. Returns how many were measured."""
    account_ids = (
        Position.objects.filter(status=Position.Status.OPEN, size__gt=0)
        .filter(account__status=Account.Status.ACTIVE)
        .values_list("account_id", flat=True)
        .distinct()
        .order_by("account_id")
    )
    measured = 0
    for account_id in list(account_ids):
        if account_equity_measure(account_id=account_id) is not None:
            measured += 1
    return measured
