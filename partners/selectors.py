"""Tenant-scoped reads. Every lookup starts from the caller's tenant, so an object of another
tenant, a malformed id and a missing id are indistinguishable: the same NotFound (API1)."""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import QuerySet

from accounts.models import Account
from core import errors
from partners.models import Tenant, TenantUser


def _parse_user_id(raw: Any) -> int:
    try:
        value = int(str(raw))
    except (TypeError, ValueError):
        raise errors.NotFound() from None
    if value <= 0 or value >= 2**63:
        raise errors.NotFound()
    return value


def _parse_uuid(raw: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(raw))
    except (TypeError, ValueError, AttributeError):
        raise errors.NotFound() from None


def mapping_get(*, tenant: Tenant, user_id: Any) -> TenantUser:
    """The tenant's mapping of a native user id; NotFound when the user is not mapped here."""
    mapping = (
        TenantUser.objects.select_related("user")
        .filter(tenant=tenant, user_id=_parse_user_id(user_id))
        .first()
    )
    if mapping is None:
        raise errors.NotFound()
    return mapping


def mapping_list(*, tenant: Tenant, external_id: str | None = None) -> QuerySet[TenantUser]:
    qs = TenantUser.objects.select_related("user").filter(tenant=tenant)
    if external_id:
        qs = qs.filter(external_id=external_id)
    return qs


def account_get_for_tenant(*, tenant: Tenant, account_id: Any) -> Account:
    account = (
        Account.objects.select_related("tenant")
        .filter(tenant=tenant, pk=_parse_uuid(account_id))
        .first()
    )
    if account is None:
        raise errors.NotFound()
    return account


def account_list_for_tenant(
    *,
    tenant: Tenant,
    user_id: Any = None,
    stage: str | None = None,
    status: str | None = None,
    external_id: str | None = None,
) -> QuerySet[Account]:
    qs = Account.objects.select_related("tenant").filter(tenant=tenant)
    if user_id not in (None, ""):
        try:
            qs = qs.filter(owner_id=_parse_user_id(user_id))
        except errors.DomainError:
            return qs.none()
    if stage:
        qs = qs.filter(stage=stage)
    if status:
        qs = qs.filter(status=status)
    if external_id:
        qs = qs.filter(external_id=external_id)
    return qs


def accounts_of_mapping(*, mapping: TenantUser) -> QuerySet[Account]:
    return Account.objects.filter(tenant_id=mapping.tenant_id, owner_id=mapping.user_id).order_by(
        "created_at", "id"
    )
