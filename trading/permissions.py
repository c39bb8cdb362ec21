"""Who may touch which account on the trader API (issue #4).

A trader only ever sees their own accounts: another user's account is the same NOT_FOUND as a
missing one, so ids cannot be probed. Trading additionally needs the account open and, for a
tenant account, the tenant enabled (a disabled firm freezes its traders' accounts).
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db import models

from accounts.models import Account, User
from core import errors
from core.sqlrows import model_from_row
from trading import store
from trading.engine import ensure_tradable

# The tenant (partners.Tenant) is reached through Account's foreign key with Django's public
# Model _meta API: trading reads its `enabled` flag and day boundary without importing partners,
# which sits above trading.
Tenant: type[models.Model] = Account._meta.get_field("tenant").related_model  # type: ignore[assignment]
_ACCOUNT_FIELDS = tuple(f.name for f in Account._meta.concrete_fields)
_TENANT_FIELDS = tuple(f.name for f in Tenant._meta.concrete_fields)


def account_for_trader(*, user: User, account_id: Any, for_update: bool = False) -> Account:
    """The account `account_id` if `user` owns it, with its tenant loaded; NotFound otherwise
    (malformed, missing or someone else's: indistinguishable). `for_update` takes the account
    row lock (only that row, not the tenant's) and must run inside a transaction. Every
    trader request runs it: its SQL is the data-access module's (trading.store)."""
    try:
        key = account_id if isinstance(account_id, uuid.UUID) else uuid.UUID(str(account_id))
    except (ValueError, TypeError, AttributeError):
        raise errors.NotFound() from None
    row = store.owned_account_row(key, owner_id=user.pk, for_update=for_update)
    if row is None:
        raise errors.NotFound()
    n = len(_ACCOUNT_FIELDS)
    account = model_from_row(Account, _ACCOUNT_FIELDS, row[:n])
    if account.tenant_id is not None:
        account.tenant = model_from_row(Tenant, _TENANT_FIELDS, row[n:])  # type: ignore[assignment]
    return account


def ensure_account_tradable(account: Account) -> None:
    """Raise AccountClosed for a closed account, TenantDisabled for an account whose tenant is
    disabled; return None when orders may be placed on it."""
    tenant = account.tenant
    ensure_tradable(status=account.status, tenant_enabled=tenant is None or tenant.enabled)
