"""Who trades and what they hold: users, login tokens, accounts (wallets), positions, the
append-only ledger and equity snapshots.

Balances on Account are a cache of the ledger, written only by accounts.services under the
account row lock; the CHECK constraints below are the last line of defence
(docs/engine-rules.md L2, L3).
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Lower
from django.utils import timezone

from core.fields import money_field, price_field, size_field


def normalize_email(email: str) -> str:
    """One user per email: addresses are compared trimmed and lowercased (both parts; no
    mainstream provider distinguishes case in the local part)."""
    return email.strip().lower()


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **extra: object) -> User:
        user = self.model(email=normalize_email(email), **extra)
        if password:
            user.set_password(password)
        else:
            user.set_unusable_password()
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra: object) -> User:
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A native trader (or an operator, with is_staff). Integer id on the wire."""

    email = models.EmailField(max_length=320, unique=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS = []

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(email=Lower("email")), name="user_email_lowercase"),
        ]

    def __str__(self) -> str:
        return self.email


class LoginToken(models.Model):
    """A one-time sign-in link. Only SHA-256 of the token is stored; the raw token is derived
    from (id, salt) with HMAC(SECRET_KEY) when the email is rendered, so neither the outbox
    nor this table ever holds a usable link."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="login_tokens")
    tenant = models.ForeignKey(
        "partners.Tenant", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    salt = models.CharField(max_length=64)
    token_hash = models.CharField(max_length=64, unique=True)
    redirect_url = models.CharField(max_length=2048)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["user", "tenant", "created_at"], name="logintoken_throttle")
        ]

    def __str__(self) -> str:
        return f"login token #{self.pk} (user {self.user_id})"


class EmailOutbox(models.Model):
    """Transactional outbox: a row is committed with the business change, then a Celery task
    sends it. At-least-once hand-off; the row id is the provider idempotency key (I4)."""

    class Status(models.TextChoices):
        PENDING = "pending"
        SENT = "sent"
        FAILED = "failed"

    kind = models.CharField(max_length=32)
    to_email = models.EmailField(max_length=320)
    payload = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "outbox email"
        verbose_name_plural = "email outbox"  # Django's default read "Email outboxs"
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="outbox_due")]

    def __str__(self) -> str:
        return f"{self.kind} to {self.to_email} ({self.status})"


class Account(models.Model):
    """One isolated wallet. Personal accounts have no tenant; tenant accounts carry the
    partner's external_id and stage."""

    class Stage(models.TextChoices):
        DEMO = "demo"
        CHALLENGE = "challenge"
        FUNDED = "funded"

    class Status(models.TextChoices):
        ACTIVE = "active"
        CLOSED = "closed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(User, on_delete=models.PROTECT, related_name="accounts")
    tenant = models.ForeignKey(
        "partners.Tenant", null=True, blank=True, on_delete=models.PROTECT, related_name="accounts"
    )
    external_id = models.CharField(max_length=255, null=True, blank=True)
    stage = models.CharField(max_length=16, choices=Stage.choices, null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    epoch = models.PositiveIntegerField(default=0)
    rules = models.JSONField(default=dict, blank=True)
    metadata = models.JSONField(default=dict, blank=True)

    starting_balance = money_field()
    cash = money_field(default=Decimal("0"))
    reserved_cash = money_field(default=Decimal("0"))
    # Current-epoch aggregates, maintained with the ledger under the row lock.
    realized_pnl = money_field(default=Decimal("0"))
    fees_paid = money_field(default=Decimal("0"))
    high_water_mark = money_field(default=Decimal("0"))
    max_drawdown = money_field(default=Decimal("0"))
    max_drawdown_pct = models.DecimalField(max_digits=12, decimal_places=4, default=Decimal("0"))
    trading_days = models.PositiveIntegerField(default=0)
    last_trading_day = models.DateField(null=True, blank=True)
    # Per-account sequence for the trades feed: fills are numbered under the row lock, so the
    # feed's order equals commit order and a poller can never skip one (docs/partner-api.md).
    last_fill_seq = models.PositiveBigIntegerField(default=0)

    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    closed_equity = money_field(null=True, blank=True)
    last_reset_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(cash__gte=0), name="account_cash_nonneg"),
            models.CheckConstraint(
                condition=Q(reserved_cash__gte=0), name="account_reserved_nonneg"
            ),
            models.CheckConstraint(
                condition=Q(reserved_cash__lte=F("cash")), name="account_available_nonneg"
            ),
            models.CheckConstraint(
                condition=Q(starting_balance__gt=0), name="account_starting_balance_pos"
            ),
            models.CheckConstraint(
                condition=Q(tenant__isnull=True)
                | (Q(external_id__isnull=False) & Q(stage__isnull=False)),
                name="account_tenant_has_external_id_and_stage",
            ),
            models.UniqueConstraint(
                fields=["tenant", "external_id"],
                condition=Q(tenant__isnull=False),
                name="account_unique_external_id_per_tenant",
            ),
            models.UniqueConstraint(
                fields=["owner"], condition=Q(tenant__isnull=True), name="account_one_personal"
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "created_at", "id"], name="account_tenant_keyset"),
        ]

    def __str__(self) -> str:
        return f"{self.external_id or 'personal'} ({self.id})"

    @property
    def available_cash(self) -> Decimal:
        return self.cash - self.reserved_cash

    @property
    def is_closed(self) -> bool:
        return self.status == self.Status.CLOSED


class LedgerEntry(models.Model):
    """Append-only: a database trigger (migration accounts.0002) refuses UPDATE and DELETE.
    cash == Σ amount over all of an account's entries (docs/engine-rules.md L2)."""

    class Kind(models.TextChoices):
        INITIAL_DEPOSIT = "INITIAL_DEPOSIT"
        TRADE = "TRADE"
        FEE = "FEE"
        SETTLEMENT = "SETTLEMENT"
        RESET = "RESET"

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="ledger")
    epoch = models.PositiveIntegerField()
    kind = models.CharField(max_length=20, choices=Kind.choices)
    amount = money_field()
    balance_after = money_field()
    order_id = models.UUIDField(null=True, blank=True)
    fill_id = models.UUIDField(null=True, blank=True)
    memo = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(balance_after__gte=0), name="ledger_balance_nonneg"),
        ]
        indexes = [models.Index(fields=["account", "id"], name="ledger_account_seq")]
        verbose_name_plural = "ledger entries"

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} on {self.account_id}"


class Position(models.Model):
    """Holdings of one outcome token in one epoch of one account."""

    class Status(models.TextChoices):
        OPEN = "open"
        SETTLED = "settled"
        CLOSED_BY_RESET = "closed_by_reset"

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="positions")
    epoch = models.PositiveIntegerField()
    token_id = models.CharField(max_length=100)
    market_id = models.CharField(max_length=100)
    market_question = models.TextField(blank=True, default="")
    outcome = models.CharField(max_length=100, blank=True, default="")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.OPEN)
    size = size_field(default=Decimal("0"))
    reserved_size = size_field(default=Decimal("0"))
    avg_price = price_field(default=Decimal("0"))
    cost_basis = money_field(default=Decimal("0"))
    realized_pnl = money_field(default=Decimal("0"))
    last_mark = price_field(null=True, blank=True)
    last_mark_at = models.DateTimeField(null=True, blank=True)
    opened_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["account", "token_id", "epoch"], name="position_unique_token_epoch"
            ),
            models.CheckConstraint(condition=Q(size__gte=0), name="position_size_nonneg"),
            models.CheckConstraint(
                condition=Q(reserved_size__gte=0), name="position_reserved_nonneg"
            ),
            models.CheckConstraint(
                condition=Q(reserved_size__lte=F("size")), name="position_available_nonneg"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.size} of {self.token_id} (epoch {self.epoch})"


class EquitySnapshot(models.Model):
    """Equity measured at account creation/reset, at every fill and each minute while the
    account has positions; the source of high-water mark, drawdown and day-start equity."""

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="equity_snapshots")
    epoch = models.PositiveIntegerField()
    at = models.DateTimeField(default=timezone.now)
    equity = money_field()
    cash = money_field()
    positions_value = money_field(default=Decimal("0"))

    class Meta:
        indexes = [models.Index(fields=["account", "epoch", "at"], name="equity_account_epoch_at")]

    def __str__(self) -> str:
        return f"{self.equity} at {self.at:%Y-%m-%d %H:%M} ({self.account_id})"


class TraderApiKey(models.Model):
    """A trader's personal API key for the native trader API: `tk_<prefix>_<secret>`. As with
    partner keys the prefix is public and indexed and only SHA-256 of the whole key is stored
    (a fast hash is right for a 256-bit random secret). A key acts as its user on the
    user's own accounts only."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="trader_api_keys")
    name = models.CharField(max_length=100, blank=True, default="")
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "trader API key"

    def __str__(self) -> str:
        return f"tk_{self.prefix}_… ({self.user_id})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
