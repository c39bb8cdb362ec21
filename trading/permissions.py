"""Who may touch which account on the trader API (issue #4).

A trader only ever sees their own accounts: another user's account is the same NOT_FOUND as a
missing one, so ids cannot be probed. Trading additionally needs the account open and, for a
tenant account, the tenant enabled (a disabled firm freezes its traders' accounts).
"""

from __future__ import annotations

import uuid
from typing import Any

from accounts.models import Account, User
from core import errors


def account_for_trader(*, user: User, account_id: Any, for_update: bool = False) -> Account:
    """The account `account_id` if `user` owns it, with its tenant loaded; NotFound otherwise
    (malformed, missing or someone else's: indistinguishable). `for_update` takes the account
    row lock (only that row, not the tenant's) and must run inside a transaction."""
    try:
        key = account_id if isinstance(account_id, uuid.UUID) else uuid.UUID(str(account_id))
    except (ValueError, TypeError, AttributeError):
        raise errors.NotFound() from None
    queryset = Account.objects.select_related("tenant").filter(pk=key, owner=user)
    if for_update:
        queryset = queryset.select_for_update(of=("self",))
    account = queryset.first()
    if account is None:
        raise errors.NotFound()
    return account


def ensure_account_tradable(account: Account) -> None:
    """Raise AccountClosed for a closed account, TenantDisabled for an account whose tenant is
    disabled; return None when orders may be placed on it."""
    if account.is_closed:
        raise errors.AccountClosed()
    tenant = account.tenant
    if tenant is not None and not tenant.enabled:
        raise errors.TenantDisabled()
