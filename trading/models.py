"""Orders and fills. The engine (trading.services) writes them; the partner trades feed pages
over Fill by (account, seq), the per-account sequence assigned under the account row lock."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.db import models
from django.db.models import Q
from django.utils import timezone

from core.fields import money_field, price_field, size_field


class Side(models.TextChoices):
    BUY = "BUY"
    SELL = "SELL"


class Order(models.Model):
    class Type(models.TextChoices):
        LIMIT = "limit"
        MARKET = "market"

    class TimeInForce(models.TextChoices):
        GTC = "GTC"
        GTD = "GTD"
        FOK = "FOK"
        FAK = "FAK"

    class Status(models.TextChoices):
        LIVE = "live"
        MATCHED = "matched"
        CANCELED = "canceled"
        EXPIRED = "expired"
        REJECTED = "rejected"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT, related_name="orders")
    epoch = models.PositiveIntegerField()
    token_id = models.CharField(max_length=100)
    market_id = models.CharField(max_length=100)
    side = models.CharField(max_length=4, choices=Side.choices)
    type = models.CharField(max_length=8, choices=Type.choices)
    time_in_force = models.CharField(max_length=3, choices=TimeInForce.choices)
    price = price_field()
    size = size_field(null=True, blank=True)
    amount = money_field(null=True, blank=True)
    expiration = models.DateTimeField(null=True, blank=True)
    post_only = models.BooleanField(default=False)
    client_order_id = models.CharField(max_length=128, null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices)
    reason = models.CharField(max_length=32, blank=True, default="")
    filled_size = size_field(default=Decimal("0"))
    filled_notional = money_field(default=Decimal("0"))
    fees_paid = money_field(default=Decimal("0"))
    reserved_cash = money_field(default=Decimal("0"))
    reserved_shares = size_field(default=Decimal("0"))
    # Queue-position model for maker fills at exactly the limit price (docs/engine-rules.md §4).
    queue_ahead = size_field(default=Decimal("0"))
    # The last trade print applied to queue_ahead (trading.matcher.trade_key: zero-padded so
    # it sorts like the stream): a replayed print at or before it is not counted again.
    queue_trigger = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["account", "client_order_id"],
                condition=Q(client_order_id__isnull=False),
                name="order_unique_client_order_id",
            ),
            models.CheckConstraint(
                condition=Q(reserved_cash__gte=0), name="order_reserved_cash_nonneg"
            ),
            models.CheckConstraint(
                condition=Q(reserved_shares__gte=0), name="order_reserved_shares_nonneg"
            ),
            models.CheckConstraint(condition=Q(filled_size__gte=0), name="order_filled_nonneg"),
            models.CheckConstraint(
                condition=Q(status="live") | (Q(reserved_cash=0) & Q(reserved_shares=0)),
                name="order_only_live_reserves",
            ),
        ]
        indexes = [
            models.Index(fields=["account", "status"], name="order_account_status"),
            models.Index(
                fields=["token_id", "side", "price"],
                condition=Q(status="live"),
                name="order_live_book",
            ),
        ]

    def __str__(self) -> str:
        return (
            f"{self.side} {self.size or self.amount} {self.token_id} @ {self.price} ({self.status})"
        )


class Fill(models.Model):
    """One execution (kind=fill) or one position paid out at resolution (kind=settlement).
    `trigger_key` is unique: applying the same fill trigger twice is impossible (I3)."""

    class Kind(models.TextChoices):
        FILL = "fill"
        SETTLEMENT = "settlement"

    class Liquidity(models.TextChoices):
        TAKER = "taker"
        MAKER = "maker"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT, related_name="fills")
    seq = models.PositiveBigIntegerField()
    epoch = models.PositiveIntegerField()
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.FILL)
    order = models.ForeignKey(
        Order, null=True, blank=True, on_delete=models.PROTECT, related_name="fills"
    )
    token_id = models.CharField(max_length=100)
    market_id = models.CharField(max_length=100)
    market_question = models.TextField(blank=True, default="")
    outcome = models.CharField(max_length=100, blank=True, default="")
    side = models.CharField(max_length=4, choices=Side.choices)
    price = price_field()
    size = size_field()
    notional = money_field()
    fee = money_field(default=Decimal("0"))
    fee_rate_bps = models.DecimalField(max_digits=10, decimal_places=4, null=True, blank=True)
    liquidity = models.CharField(max_length=5, choices=Liquidity.choices, null=True, blank=True)
    realized_pnl = money_field(default=Decimal("0"))
    price_source = models.CharField(max_length=32, blank=True, default="")
    book_as_of = models.DateTimeField(null=True, blank=True)
    book_hash = models.CharField(max_length=64, blank=True, default="")
    levels = models.JSONField(default=list, blank=True)
    vwap = price_field(null=True, blank=True)
    mid_gap = price_field(null=True, blank=True)
    trigger_key = models.CharField(max_length=200, unique=True)
    filled_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["account", "seq"], name="fill_unique_account_seq"),
            models.CheckConstraint(condition=Q(size__gt=0), name="fill_size_pos"),
            models.CheckConstraint(condition=Q(fee__gte=0), name="fill_fee_nonneg"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.side} {self.size} @ {self.price} ({self.account_id})"
