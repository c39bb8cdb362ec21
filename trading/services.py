"""Trading services. The order engine lands with issue #4; what is here now is what account
lifecycle needs: cancelling orders (releasing reservations exactly), close and reset."""

from __future__ import annotations

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import Account, Position
from accounts.services.wallets import account_close_wallet, account_lock, account_reset_wallet
from core import errors
from core.db import retry_on_conflict
from core.money import ZERO
from trading import states
from trading.models import Order
from trading.selectors import account_equity


def order_cancel_all(*, account: Account, reason: str) -> int:
    """Cancel every live order of the account's current epoch, releasing exactly what each
    reserved (cash on the account, shares on the position). Caller holds the account lock.
    Returns how many orders were cancelled."""
    live = list(Order.objects.select_for_update().filter(account=account, status=Order.Status.LIVE))
    if not live:
        return 0
    now = timezone.now()
    released_cash = ZERO
    for order in live:
        states.ensure_transition(order.status, states.CANCELED)
        released_cash += order.reserved_cash
        if order.reserved_shares:
            Position.objects.filter(
                account=account, token_id=order.token_id, epoch=order.epoch
            ).update(reserved_size=F("reserved_size") - order.reserved_shares)
    Order.objects.filter(pk__in=[o.pk for o in live]).update(
        status=Order.Status.CANCELED,
        reason=reason,
        reserved_cash=ZERO,
        reserved_shares=ZERO,
        updated_at=now,
    )
    if released_cash:
        account.reserved_cash -= released_cash
        Account.objects.filter(pk=account.pk).update(reserved_cash=account.reserved_cash)
    return len(live)


@retry_on_conflict()
@transaction.atomic
def account_close(*, account: Account) -> Account:
    """Close (freeze) an account: cancel open orders (reason ACCOUNT_CLOSED), keep positions,
    record closed_at and the equity at close. Idempotent: closing a closed account changes
    nothing. Takes the account row lock."""
    locked = account_lock(account_id=account.pk)
    if locked.is_closed:
        return locked
    order_cancel_all(account=locked, reason="ACCOUNT_CLOSED")
    return account_close_wallet(account=locked, equity=account_equity(account=locked))


@retry_on_conflict()
@transaction.atomic
def account_reset(*, account: Account) -> Account:
    """Reset an account to its starting balance in a new epoch (partner-api.md §4): cancel
    open orders (ACCOUNT_RESET), close positions as closed_by_reset, RESET ledger entry.
    Closed accounts refuse with ACCOUNT_CLOSED. Takes the account row lock. Not idempotent by
    itself (each call starts an epoch); partners make retries safe with Idempotency-Key."""
    locked = account_lock(account_id=account.pk)
    if locked.is_closed:
        raise errors.AccountClosed()
    order_cancel_all(account=locked, reason="ACCOUNT_RESET")
    return account_reset_wallet(account=locked)
