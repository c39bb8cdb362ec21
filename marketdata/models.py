"""Where prices come from: Polymarket events, markets (one binary question each), their outcome
tokens, the one resolution record per market, and the websocket feed's health per shard.

Rows are written only by marketdata.services (discovery, resolution) and the ingester; the admin
is view-only because Polymarket is the source of truth and the next discovery would overwrite
any hand edit. Status changes follow marketdata.states.
"""

from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.db.models import Q
from django.utils import timezone

from core.fields import money_field, price_field, size_field
from marketdata import states


class Event(models.Model):
    """A Gamma event: one question (a single binary market) or a group of binary markets that
    share a negRiskMarketID (multi-outcome, normally exactly one resolves Yes)."""

    gamma_id = models.CharField(max_length=64, unique=True)
    slug = models.CharField(max_length=255, db_index=True)
    ticker = models.CharField(max_length=255, blank=True, default="")
    title = models.TextField()
    category = models.CharField(max_length=64, blank=True, default="")
    neg_risk = models.BooleanField(default=False)
    neg_risk_market_id = models.CharField(max_length=80, blank=True, default="")
    active = models.BooleanField(default=True)
    closed = models.BooleanField(default=False)
    start_date = models.DateTimeField(null=True, blank=True)
    end_date = models.DateTimeField(null=True, blank=True)
    volume = money_field(default=Decimal("0"))
    liquidity = money_field(default=Decimal("0"))
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-volume",)

    def __str__(self) -> str:
        return self.title


class Market(models.Model):
    """One binary question (`condition_id`) with two outcome tokens.

    `closed` and `accepting_orders` are Polymarket's raw flags as last seen; `status` is our
    lifecycle (states.py), changed only by services.market_apply_verdict. Never read
    `accepting_orders` as a resolution signal: it stays true after close on some markets.
    """

    class Status(models.TextChoices):
        OPEN = states.OPEN
        CLOSED = states.CLOSED, "closed (halted, pending)"
        RESOLVED = states.RESOLVED
        VOID = states.VOID, "void (50-50)"
        AMBIGUOUS = states.AMBIGUOUS

    event = models.ForeignKey(
        Event, null=True, blank=True, on_delete=models.SET_NULL, related_name="markets"
    )
    condition_id = models.CharField(max_length=80, unique=True)
    gamma_id = models.CharField(max_length=64, unique=True, null=True, blank=True)
    question_id = models.CharField(max_length=80, blank=True, default="")
    question = models.TextField()
    slug = models.CharField(max_length=255, db_index=True, blank=True, default="")
    category = models.CharField(max_length=64, blank=True, default="")
    group_item_title = models.CharField(max_length=255, blank=True, default="")

    # Trading rules. Null = not known yet (Gamma omits them on markets nested in /events);
    # discovery fills them from the CLOB.
    tick_size = price_field(null=True, blank=True)
    min_order_size = size_field(null=True, blank=True)
    neg_risk = models.BooleanField(default=False)
    neg_risk_market_id = models.CharField(max_length=80, blank=True, default="")
    enable_order_book = models.BooleanField(default=True)

    # Taker fee schedule (polymarket.md §5): fee = C × rate × (p(1−p))^exponent, floored to
    # 5 dp. Null rate = unknown; fees_enabled=False with rate 0 = no fee.
    fees_enabled = models.BooleanField(default=False)
    fee_type = models.CharField(max_length=32, blank=True, default="")
    fee_rate = price_field(null=True, blank=True)
    fee_exponent = models.DecimalField(max_digits=6, decimal_places=3, null=True, blank=True)
    fee_taker_only = models.BooleanField(default=True)
    fee_rebate_rate = price_field(null=True, blank=True)

    # Polymarket's raw flags and dates.
    active = models.BooleanField(default=True)
    closed = models.BooleanField(default=False)
    archived = models.BooleanField(default=False)
    accepting_orders = models.BooleanField(default=False)
    end_date = models.DateTimeField(null=True, blank=True)
    closed_time = models.DateTimeField(null=True, blank=True)
    uma_resolution_status = models.CharField(max_length=32, blank=True, default="")

    # Our lifecycle.
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    status_changed_at = models.DateTimeField(null=True, blank=True)

    # Gamma's indicative numbers (floats on the wire, converted via str() at the edge).
    volume = money_field(default=Decimal("0"))
    volume_24hr = money_field(default=Decimal("0"))
    liquidity = money_field(default=Decimal("0"))
    best_bid = price_field(null=True, blank=True)
    best_ask = price_field(null=True, blank=True)
    last_trade_price = price_field(null=True, blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    # Last time discovery saw this market on Gamma: the admin's freshness column.
    synced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-volume",)
        indexes = [
            # The tradable universe, biggest first (market lists, discovery reports).
            models.Index(
                fields=["-volume"], condition=Q(status=states.OPEN), name="market_open_by_volume"
            ),
            # Markets past their end date that are still open (resolution polling).
            models.Index(
                fields=["end_date"], condition=Q(status=states.OPEN), name="market_open_end_date"
            ),
            # Closed-but-pending markets (resolution polling).
            models.Index(fields=["status", "status_changed_at"], name="market_status_changed"),
            models.Index(fields=["neg_risk_market_id"], name="market_neg_risk_group"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=sorted(states.MARKET_TRANSITIONS)),
                name="market_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.question

    @property
    def is_tradable(self) -> bool:
        return self.status == states.OPEN


class Token(models.Model):
    """An outcome token (ERC-1155 position id); `index` aligns with Gamma's outcomes[]."""

    market = models.ForeignKey(Market, on_delete=models.CASCADE, related_name="tokens")
    token_id = models.CharField(max_length=100, unique=True)
    outcome = models.CharField(max_length=100)
    index = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ("market_id", "index")
        indexes = [models.Index(fields=["market", "index"], name="token_market_index")]

    def __str__(self) -> str:
        return f"{self.outcome} ({self.token_id[:12]}…)"


class MarketResolution(models.Model):
    """The domain event the trading app consumes for settlement: one row per market, created
    exactly once by services.market_apply_verdict however many sources report the result.

    `payouts` maps every token id of the market to its final price as a decimal string (1/0,
    or 0.5/0.5 for a 50-50 market); empty for `ambiguous`, which must not be settled (it is
    surfaced in the admin until an operator resolves it manually, which rewrites this row and
    clears `consumed_at` so the trading app picks it up again).
    """

    class State(models.TextChoices):
        RESOLVED = states.RESOLVED
        VOID = states.VOID, "void (50-50)"
        AMBIGUOUS = states.AMBIGUOUS

    class Source(models.TextChoices):
        WS = "ws", "websocket market_resolved"
        CLOB = "clob", "CLOB market"
        GAMMA = "gamma", "Gamma market"
        MANUAL = "manual", "manual (operator)"

    market = models.OneToOneField(Market, on_delete=models.PROTECT, related_name="resolution")
    state = models.CharField(max_length=16, choices=State.choices)
    winning_token = models.ForeignKey(
        Token, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    winning_outcome = models.CharField(max_length=100, blank=True, default="")
    payouts = models.JSONField(default=dict, blank=True)
    source = models.CharField(max_length=16, choices=Source.choices)
    reason = models.CharField(max_length=255, blank=True, default="")
    detected_at = models.DateTimeField(default=timezone.now)
    evidence = models.JSONField(default=dict, blank=True)
    consumed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["detected_at"],
                condition=Q(consumed_at__isnull=True),
                name="resolution_unconsumed",
            )
        ]
        constraints = [
            models.CheckConstraint(
                condition=~Q(state=states.RESOLVED) | Q(winning_token__isnull=False),
                name="resolution_resolved_has_winner",
            ),
            models.CheckConstraint(
                condition=Q(state__in=sorted(states.OUTCOME_STATES)),
                name="resolution_state_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.market_id}: {self.state} ({self.source})"

    def payout_for(self, token_id: str) -> Decimal | None:
        """The final price of one share of `token_id`; None when not settleable."""
        raw = (self.payouts or {}).get(token_id)
        return Decimal(raw) if raw is not None else None

    @property
    def payouts_decimal(self) -> dict[str, Decimal]:
        return {token_id: Decimal(value) for token_id, value in (self.payouts or {}).items()}


class FeedHealth(models.Model):
    """Live counters of one websocket ingester shard (written by the feed process, shown on the
    admin's feed health page). Counters are totals since the shard process started."""

    shard = models.PositiveSmallIntegerField(unique=True)
    connections = models.PositiveIntegerField(default=0)
    subscribed_tokens = models.PositiveIntegerField(default=0)
    last_message_at = models.DateTimeField(null=True, blank=True)
    messages = models.PositiveBigIntegerField(default=0)
    stale_tokens = models.PositiveIntegerField(default=0)
    resyncs = models.PositiveBigIntegerField(default=0)
    hash_mismatches = models.PositiveBigIntegerField(default=0)
    reconnects = models.PositiveBigIntegerField(default=0)
    # Why Redis is not taking the feed's writes right now ("" = it is), and how often it
    # failed since the process started (the feed retries by itself: marketdata/ingest.py).
    bus_error = models.CharField(max_length=300, blank=True, default="")
    bus_failures = models.PositiveBigIntegerField(default=0)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("shard",)
        verbose_name_plural = "feed health"

    def __str__(self) -> str:
        return f"shard {self.shard}"
