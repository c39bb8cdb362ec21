"""Account lifecycle on the trading side: close and reset cancel open orders first (releasing
reservations exactly), then hand over to the wallet services."""

from __future__ import annotations

from django.db import transaction

from accounts.models import Account
from accounts.services.wallets import account_close_wallet, account_lock, account_reset_wallet
from core import errors
from core.db import retry_on_conflict
from trading.selectors import account_equity
from trading.services.cancel import order_cancel_all


@retry_on_conflict()
@transaction.atomic
def account_close(*, account: Account) -> Account:
    """Close (freeze) an account: cancel open orders (reason ACCOUNT_CLOSED), keep positions,
    record closed_at and the equity at close. Idempotent: closing a closed account changes
    nothing. Takes the account row lock."""
    locked = account_lock(account_id=account.pk)
    if locked.is_closed:
        return locked
    if order_cancel_all(account_id=locked.pk, reason="ACCOUNT_CLOSED"):
        locked.refresh_from_db()
    return account_close_wallet(account=locked, equity=account_equity(account=locked))


@retry_on_conflict()
@transaction.atomic
def account_reset(*, account: Account) -> Account:
    """Reset an account to its starting balance in a new epoch (docs/partner-api.md): cancel
    open orders (ACCOUNT_RESET), close positions as closed_by_reset, RESET ledger entry.
    Closed accounts refuse with ACCOUNT_CLOSED. Takes the account row lock. Not idempotent by
    itself (each call starts an epoch); partners make retries safe with Idempotency-Key."""
    locked = account_lock(account_id=account.pk)
    if locked.is_closed:
        raise errors.AccountClosed()
    if order_cancel_all(account_id=locked.pk, reason="ACCOUNT_RESET"):
        locked.refresh_from_db()
    return account_reset_wallet(account=locked)
