"""Who may touch which account on the trader API (issue #4).

A trader only ever sees their own accounts: another user's account is the same NOT_FOUND as a
missing one, so ids cannot be probed. Trading additionally needs the account open and, for a
tenant account, the tenant enabled (a disabled firm freezes its traders' accounts).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from functools import cache
from typing import Any

from django.db import connection, models

from accounts.models import Account, User
from core import errors
from core.sqlrows import Statement, model_from_row
from trading.engine import ensure_tradable

# The tenant (partners.Tenant) is reached through Account's foreign key with Django's public
# Model _meta API: trading reads its `enabled` flag and day boundary without importing partners,
# which sits above trading.
Tenant: type[models.Model] = Account._meta.get_field("tenant").related_model  # type: ignore[assignment]
_ACCOUNT_FIELDS = tuple(f.name for f in Account._meta.concrete_fields)
_TENANT_FIELDS = tuple(f.name for f in Tenant._meta.concrete_fields)


@cache
def _sql(lock: str) -> str:
    """The account with its tenant, as fixed SQL: every trader request runs it, and building
    it with the ORM (a select_related of two wide rows) cost several times running it. Only
    model table and column names are interpolated; values are bound."""
    a_cols = ", ".join(f"a.{f.column}" for f in Account._meta.concrete_fields)
    t_cols = ", ".join(f"t.{f.column}" for f in Tenant._meta.concrete_fields)
    return f"""
        SELECT {a_cols}, {t_cols}
          FROM {Account._meta.db_table} a LEFT JOIN {Tenant._meta.db_table} t
            ON t.id = a.tenant_id
         WHERE a.id = %s AND a.owner_id = %s {lock}
    """


def account_for_trader(*, user: User, account_id: Any, for_update: bool = False) -> Account:
    """The account `account_id` if `user` owns it, with its tenant loaded; NotFound otherwise
    (malformed, missing or someone else's: indistinguishable). `for_update` takes the account
    row lock (only that row, not the tenant's) and must run inside a transaction."""
    statement = account_for_trader_statement(
        user=user, account_id=account_id, for_update=for_update
    )
    with connection.cursor() as cursor:
        cursor.execute(*statement)
        row = cursor.fetchone()
    return account_for_trader_from_row(row)


def account_for_trader_statement(
    *, user: User, account_id: Any, for_update: bool = False
) -> Statement:
    """`account_for_trader`'s SELECT, for a caller that sends it with other reads in one
    round trip (core.sqlrows.fetch_statements) and passes its row to
    `account_for_trader_from_row`. NotFound at once for a malformed id."""
    try:
        key = account_id if isinstance(account_id, uuid.UUID) else uuid.UUID(str(account_id))
    except (ValueError, TypeError, AttributeError):
        raise errors.NotFound() from None
    return _sql("FOR UPDATE OF a" if for_update else ""), [key, user.pk]


def account_for_trader_from_row(row: Sequence[Any] | None) -> Account:
    """The Account (and its tenant) of a row of `account_for_trader_statement`; NotFound for
    no row."""
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
