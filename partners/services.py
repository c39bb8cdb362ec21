"""Partner-side business operations. Views, admin actions and management commands call
these; nothing else writes partners' models."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from accounts.models import Account, User, normalize_email
from accounts.services import login_link_request, normalize_origin
from accounts.services.wallets import (
    USER_COLUMNS,
    account_open,
    account_update,
    user_ensure,
)
from core import errors
from core.db import create_or_get
from core.sqlrows import model_from_row
from partners import keys
from partners.models import ALL_SCOPES, ApiKey, Tenant, TenantUser
from partners.selectors import mapping_get


# --- Tenants ------------------------------------------------------------------------------
def tenant_create(
    *,
    slug: str,
    name: str,
    enabled: bool = True,
    rate_limit_per_second: int | None = None,
    rate_limit_per_minute: int | None = None,
) -> Tenant:
    """Create a tenant. Raises ValidationFailed if the slug is taken."""
    if Tenant.objects.filter(slug=slug).exists():
        raise errors.ValidationFailed(
            f"tenant {slug!r} already exists", details={"slug": ["taken"]}
        )
    tenant = Tenant(slug=slug, name=name, enabled=enabled)
    if rate_limit_per_second is not None:
        tenant.rate_limit_per_second = rate_limit_per_second
    if rate_limit_per_minute is not None:
        tenant.rate_limit_per_minute = rate_limit_per_minute
    tenant.full_clean()
    tenant.save()
    return tenant


def tenant_set_enabled(*, tenant: Tenant, enabled: bool) -> Tenant:
    """Enable or disable a tenant. A disabled tenant's keys get 404 on the whole surface
    within API_KEY_CACHE_SECONDS."""
    Tenant.objects.filter(pk=tenant.pk).update(enabled=enabled, updated_at=timezone.now())
    tenant.refresh_from_db()
    keys.key_cache.clear()
    return tenant


@transaction.atomic
def tenant_allow_redirect(*, tenant: Tenant, origin: str) -> Tenant:
    """Add an origin to the tenant's login-link redirect allowlist (idempotent).
    Locks the tenant row so concurrent additions do not lose each other."""
    normalized = normalize_origin(origin)
    locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
    allowlist = list(locked.redirect_allowlist or [])
    if normalized not in allowlist:
        allowlist.append(normalized)
        locked.redirect_allowlist = allowlist
        locked.save(update_fields=["redirect_allowlist", "updated_at"])
    # This process stops serving the cached tenant now and again once the change is visible;
    # other processes follow within API_KEY_CACHE_SECONDS.
    keys.key_cache.clear()
    transaction.on_commit(keys.key_cache.clear)
    return locked


# --- API keys -----------------------------------------------------------------------------
@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    raw_key: str  # shown once, never stored


def apikey_create(*, tenant: Tenant, name: str = "", scopes: list[str] | None = None) -> IssuedKey:
    """Mint a key for a tenant. The raw key is returned once; only its hash is stored."""
    chosen = list(dict.fromkeys(scopes)) if scopes else list(ALL_SCOPES)
    unknown = [s for s in chosen if s not in ALL_SCOPES]
    if unknown:
        raise errors.ValidationFailed(
            f"unknown scopes: {', '.join(unknown)}", details={"scopes": unknown}
        )
    for _ in range(5):  # prefix collisions are ~1 in 2.8e12; retry anyway rather than 500
        prefix, raw = keys.generate_key()
        if not ApiKey.objects.filter(prefix=prefix).exists():
            break
    api_key = ApiKey.objects.create(
        tenant=tenant, name=name, prefix=prefix, secret_hash=keys.hash_key(raw), scopes=chosen
    )
    return IssuedKey(api_key=api_key, raw_key=raw)


def apikey_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke a key (idempotent). Every process stops accepting it within
    API_KEY_CACHE_SECONDS (< 5 s)."""
    if api_key.revoked_at is None:
        ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        api_key.refresh_from_db()
    keys.key_cache.clear()
    return api_key


@transaction.atomic
def apikey_rotate(*, api_key: ApiKey) -> IssuedKey:
    """Issue a replacement key with the same tenant, name and scopes. The old key stays valid
    so the partner can deploy the new one, then revoke the old (two keys during rotation)."""
    return apikey_create(
        tenant=api_key.tenant, name=f"{api_key.name} (rotated)".strip(), scopes=list(api_key.scopes)
    )


# --- Traders and accounts -----------------------------------------------------------------
def _mapping_replay(mapping: TenantUser, email: str) -> tuple[TenantUser, bool]:
    if mapping.user.email != email:
        raise errors.ExternalIdConflict(
            "external_id is already registered with a different email",
            details={"external_id": [mapping.external_id]},
        )
    return mapping, False


_MAPPING_COLUMNS = ("id", "tenant_id", "user_id", "external_id", "metadata", "created_at")
_MAPPING_GET = (
    'SELECT m."id", m."tenant_id", m."user_id", m."external_id", m."metadata", m."created_at", '
    + ", ".join(f'u."{c}"' for c in USER_COLUMNS)
    + ' FROM "partners_tenantuser" m JOIN "accounts_user" u ON u."id" = m."user_id" '
    'WHERE m."tenant_id" = %s AND m."external_id" = %s'
)
_MAPPING_INSERT = (
    'INSERT INTO "partners_tenantuser" ("id", "tenant_id", "user_id", "external_id", '
    '"metadata", "created_at") VALUES (%s, %s, %s, %s, CAST(%s AS jsonb), %s) '
    'ON CONFLICT DO NOTHING RETURNING "id"'
)


def _mapping_from_db(tenant: Tenant, user: User, values: Sequence[Any]) -> TenantUser:
    """A mapping from values of _MAPPING_COLUMNS, with its tenant and user attached."""
    mapping = model_from_row(TenantUser, _MAPPING_COLUMNS, values)
    mapping.tenant = tenant
    mapping.user = user
    return mapping


def _mapping_get(tenant: Tenant, external_id: str) -> TenantUser | None:
    with connection.cursor() as cursor:
        cursor.execute(_MAPPING_GET, [tenant.pk, external_id])
        row = cursor.fetchone()
    if row is None:
        return None
    n = len(_MAPPING_COLUMNS)
    return _mapping_from_db(tenant, model_from_row(User, USER_COLUMNS, row[n:]), row[:n])


@transaction.atomic
def trader_register(
    *, tenant: Tenant, external_id: str, email: str, metadata: dict[str, Any] | None = None
) -> tuple[TenantUser, bool]:
    """Register or resolve a trader: (tenant, external_id) → one native user per email.

    Idempotent on external_id: a replay with the same email returns the existing mapping
    (created=False) and never changes stored metadata; a different email is
    EXTERNAL_ID_CONFLICT; an email already mapped here under another external_id is
    EMAIL_ALREADY_MAPPED. An email that belongs to a user from elsewhere (retail or another
    tenant) is linked without revealing it: new and existing emails run the same statements.
    Race-safe without locks or savepoints: the unique indexes on user.email,
    (tenant, external_id) and (tenant, user) decide, and every refused insert is read back.

    Fixed SQL, not the ORM (a hot write: building the ORM's queries cost more CPU than the
    database spent running them). A new registration is the mapping read, the user's
    insert-or-read and the mapping's insert, between BEGIN and COMMIT."""
    email = normalize_email(email)
    existing = _mapping_get(tenant, external_id)
    if existing is not None:
        return _mapping_replay(existing, email)
    user = user_ensure(email=email)
    # ON CONFLICT DO NOTHING, then read back: if an identical registration committed first
    # (we waited on its unique index), its row is a replay; if our row was refused only by
    # (tenant, user), the email is mapped here under another external_id.
    pk = uuid.uuid4()
    created_at = timezone.now()
    metadata = metadata or {}
    with connection.cursor() as cursor:
        cursor.execute(
            _MAPPING_INSERT,
            [
                pk,
                tenant.pk,
                user.pk,
                external_id,
                json.dumps(metadata),
                created_at,
            ],
        )
        inserted = cursor.fetchone() is not None
    if inserted:
        values = [pk, tenant.pk, user.pk, external_id, metadata, created_at]
        return _mapping_from_db(tenant, user, values), True
    mapping = _mapping_get(tenant, external_id)
    if mapping is None:
        raise errors.EmailAlreadyMapped()
    return _mapping_replay(mapping, email)


def _account_replay(
    account: Account, *, user_id: int, stage: str, starting_balance: Decimal
) -> tuple[Account, bool]:
    differs = [
        name
        for name, same in (
            ("user_id", account.owner_id == user_id),
            ("stage", account.stage == stage),
            ("starting_balance", account.starting_balance == starting_balance),
        )
        if not same
    ]
    if differs:
        raise errors.ExternalIdConflict(
            "an account with this external_id exists with different values",
            details={field: ["differs from the existing account"] for field in differs},
        )
    return account, False


@transaction.atomic
def partner_account_open(
    *,
    tenant: Tenant,
    user_id: Any,
    external_id: str,
    stage: str,
    starting_balance: Decimal,
    rules: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> tuple[Account, bool]:
    """Provision a tenant account for a mapped trader, funded by an INITIAL_DEPOSIT.

    Idempotent on (tenant, external_id): a replay with the same user, stage and starting
    balance returns the existing account (created=False); any difference is
    EXTERNAL_ID_CONFLICT. A user not mapped in this tenant is NOT_FOUND. Race-safe through
    the unique (tenant, external_id) index."""
    mapping = mapping_get(tenant=tenant, user_id=user_id)

    def get_account() -> Account | None:
        return Account.objects.filter(tenant=tenant, external_id=external_id).first()

    existing = get_account()
    if existing is None:
        account, created = create_or_get(
            lambda: account_open(
                owner=mapping.user,
                tenant=tenant,
                external_id=external_id,
                stage=stage,
                starting_balance=starting_balance,
                rules=rules,
                metadata=metadata,
            ),
            get_account,
        )
        if created:
            return account, True
        existing = account
    return _account_replay(
        existing, user_id=mapping.user_id, stage=stage, starting_balance=starting_balance
    )


def partner_login_link_send(
    *, tenant: Tenant, user_id: Any, redirect_url: str | None = None
) -> None:
    """Queue a one-time login link email for a trader mapped in this tenant. The link never
    appears in a response; the outbox row commits with the token (see accounts.services)."""
    mapping = mapping_get(tenant=tenant, user_id=user_id)
    login_link_request(user=mapping.user, tenant=tenant, redirect_url=redirect_url)


PATCHABLE_ACCOUNT_FIELDS = frozenset({"rules", "metadata"})


def patch_fields_check(*, changes: dict[str, Any]) -> None:
    """Any field but rules/metadata is FIELD_NOT_PATCHABLE, naming it (checked before the
    values themselves, so `{"stage": ...}` always says why it is refused)."""
    refused = sorted(set(changes) - PATCHABLE_ACCOUNT_FIELDS)
    if refused:
        raise errors.FieldNotPatchable(
            f"not patchable: {', '.join(refused)}; only rules and metadata can be changed",
            details={field: ["This field cannot be changed."] for field in refused},
        )


def partner_account_patch(*, account: Account, changes: dict[str, Any]) -> Account:
    """Replace rules and/or metadata (each whole). A closed account is ACCOUNT_CLOSED."""
    patch_fields_check(changes=changes)
    return account_update(
        account=account, rules=changes.get("rules"), metadata=changes.get("metadata")
    )
