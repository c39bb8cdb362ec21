"""The firm side: tenants, their API keys, their view of traders, idempotency records."""

from __future__ import annotations

import datetime as dt
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Scope(models.TextChoices):
    USERS_WRITE = "users:write"
    ACCOUNTS_WRITE = "accounts:write"
    ACCOUNTS_READ = "accounts:read"


ALL_SCOPES = [s.value for s in Scope]


def _default_per_second() -> int:
    return int(settings.RATE_LIMIT_DEFAULT_PER_SECOND)


def _default_per_minute() -> int:
    return int(settings.RATE_LIMIT_DEFAULT_PER_MINUTE)


def _default_scopes() -> list[str]:
    return list(ALL_SCOPES)


class Tenant(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    enabled = models.BooleanField(default=True)
    rate_limit_per_second = models.PositiveIntegerField(default=_default_per_second)
    rate_limit_per_minute = models.PositiveIntegerField(default=_default_per_minute)
    # Origins ("https://firm.example", "http://localhost:3000") a login link may redirect to.
    redirect_allowlist = models.JSONField(default=list, blank=True)
    # Where a trader lands after a login link without redirect_url: a path on our trader UI or
    # an allowlisted absolute URL.
    default_landing_url = models.CharField(max_length=2048, default="/app/")
    day_boundary_tz = models.CharField(max_length=64, default="UTC")
    day_boundary_time = models.TimeField(default=dt.time(0, 0))
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(rate_limit_per_second__gt=0) & Q(rate_limit_per_minute__gt=0),
                name="tenant_rate_limits_positive",
            ),
        ]

    def __str__(self) -> str:
        return self.slug


class ApiKey(models.Model):
    """`pk_<prefix>_<secret>`: the prefix is public and indexed, only SHA-256 of the whole key
    is stored (a fast hash is right for 256-bit random secrets; a password hash would add
    ~100 ms to every call)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True, default="")
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    scopes = models.JSONField(default=_default_scopes)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"pk_{self.prefix}_… ({self.tenant.slug})"

    @property
    def is_active(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class TenantUser(models.Model):
    """A tenant's handle on a native user: (tenant, external_id) → user."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="mappings")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="tenant_mappings"
    )
    external_id = models.CharField(max_length=255)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "external_id"], name="tenantuser_unique_external_id"
            ),
            models.UniqueConstraint(fields=["tenant", "user"], name="tenantuser_unique_user"),
        ]
        indexes = [models.Index(fields=["tenant", "created_at", "id"], name="tenantuser_keyset")]
        verbose_name = "tenant user mapping"

    def __str__(self) -> str:
        return f"{self.tenant.slug}:{self.external_id}"


class IdempotencyRecord(models.Model):
    """A completed request under an Idempotency-Key, written in the same transaction as its
    effect so both commit or neither does (I1). Scoped per tenant (partner API) or per trader
    user (native trader API): exactly one of `tenant` / `user` is set, and a key is unique
    within its scope."""

    tenant = models.ForeignKey(Tenant, null=True, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.CASCADE, related_name="+"
    )
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=500)
    response_status = models.PositiveSmallIntegerField()
    response_body = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "key"],
                condition=Q(tenant__isnull=False),
                name="idempotency_unique_key",
            ),
            models.UniqueConstraint(
                fields=["user", "key"],
                condition=Q(user__isnull=False),
                name="idempotency_unique_user_key",
            ),
            models.CheckConstraint(
                condition=Q(tenant__isnull=False, user__isnull=True)
                | Q(tenant__isnull=True, user__isnull=False),
                name="idempotency_one_scope",
            ),
        ]
        indexes = [models.Index(fields=["expires_at"], name="idempotency_expiry")]

    def __str__(self) -> str:
        return f"{self.method} {self.path} [{self.key}]"
