"""Operator admin for market data: view-only (Polymarket is the source of truth and discovery
would overwrite any edit). Markets show their lifecycle status and how fresh their Gamma data
is; the feed health list is the ingester's dashboard (connections, last message age, stale
tokens, resyncs, hash mismatches). Manual resolution goes through
marketdata.services.market_resolve_manually, never through a form here.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from marketdata import states
from marketdata.bus import get_bus, latest_many_live
from marketdata.models import Event, FeedHealth, Market, MarketResolution, Token

# The current changelist page's live tops, per request thread (ModelAdmin is shared).
_page = threading.local()

STATUS_COLOURS = {
    states.OPEN: "#1b7f3b",
    states.CLOSED: "#a15c00",
    states.RESOLVED: "#1f4e9c",
    states.VOID: "#6b4fa0",
    states.AMBIGUOUS: "#b00020",
}
# Feed rows older than this are shown in red: the shard has stopped reporting.
FEED_STALE_AFTER = timedelta(seconds=30)
# Gamma data older than this is shown in red: discovery runs every 10 minutes.
MARKET_STALE_AFTER = timedelta(minutes=30)


class ViewOnlyMixin:
    """No add, change or delete, whoever asks (detail pages render read-only)."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def age(when: datetime | None, *, stale_after: timedelta) -> str:
    """'42s ago' / '7m ago' / '3h ago' / '2d ago', red once older than `stale_after`."""
    if when is None:
        return format_html('<span style="color:{}">{}</span>', "#b00020", "never")
    seconds = max(0, int((timezone.now() - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            text = f"{seconds // size}{unit} ago"
            break
    else:
        text = f"{seconds}s ago"
    colour = "#b00020" if timedelta(seconds=seconds) > stale_after else "inherit"
    return format_html('<span style="color:{}">{}</span>', colour, text)


def status_badge(status: str, label: str) -> str:
    return format_html(
        '<span style="color:#fff;background:{};padding:1px 6px;border-radius:8px">{}</span>',
        STATUS_COLOURS.get(status, "#555"),
        label,
    )


@admin.register(Event)
class EventAdmin(ViewOnlyMixin, admin.ModelAdmin):
    list_display = ("title", "category", "neg_risk", "closed", "end_date", "volume", "markets_")
    list_filter = ("neg_risk", "closed", "category")
    search_fields = ("title", "slug", "=gamma_id")
    ordering = ("-volume",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Event]:
        return super().get_queryset(request).annotate(market_count=Count("markets"))

    @admin.display(description="markets", ordering="market_count")
    def markets_(self, obj: Event) -> int:
        return obj.market_count  # type: ignore[attr-defined]


class TokenInline(ViewOnlyMixin, admin.TabularInline):
    model = Token
    fields = ("index", "outcome", "token_id")
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Market)
class MarketAdmin(ViewOnlyMixin, admin.ModelAdmin):
    list_display = (
        "question",
        "status_",
        "category",
        "tick_size",
        "accepting_orders",
        "closed",
        "end_date",
        "volume",
        "book",
        "freshness",
    )
    list_filter = (
        "status",
        "category",
        "neg_risk",
        "closed",
        "accepting_orders",
        "fees_enabled",
        "enable_order_book",
    )
    search_fields = ("question", "slug", "=condition_id", "=gamma_id", "=tokens__token_id")
    list_select_related = ("event",)
    ordering = ("-volume",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Market]:
        return super().get_queryset(request).prefetch_related("tokens")

    inlines = (TokenInline,)
    fieldsets = (
        (None, {"fields": ("question", "status", "status_changed_at", "event", "category")}),
        (
            "Identity",
            {"fields": ("condition_id", "gamma_id", "question_id", "slug", "group_item_title")},
        ),
        (
            "Trading rules",
            {
                "fields": (
                    "tick_size",
                    "min_order_size",
                    "neg_risk",
                    "neg_risk_market_id",
                    "enable_order_book",
                )
            },
        ),
        (
            "Fees",
            {
                "fields": (
                    "fees_enabled",
                    "fee_type",
                    "fee_rate",
                    "fee_exponent",
                    "fee_taker_only",
                    "fee_rebate_rate",
                )
            },
        ),
        (
            "Polymarket flags",
            {
                "fields": (
                    "active",
                    "closed",
                    "archived",
                    "accepting_orders",
                    "end_date",
                    "closed_time",
                    "uma_resolution_status",
                )
            },
        ),
        (
            "Numbers",
            {
                "fields": (
                    "volume",
                    "volume_24hr",
                    "liquidity",
                    "best_bid",
                    "best_ask",
                    "last_trade_price",
                )
            },
        ),
        ("Dates", {"fields": ("created_at", "updated_at", "synced_at")}),
    )

    @admin.display(description="status", ordering="status")
    def status_(self, obj: Market) -> str:
        return status_badge(obj.status, obj.get_status_display())

    @admin.display(description="Gamma data", ordering="synced_at")
    def freshness(self, obj: Market) -> str:
        return age(obj.synced_at, stale_after=MARKET_STALE_AFTER)

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        """Read the live books of the whole page from the price bus in one round trip."""
        changelist = super().get_changelist_instance(request)
        tokens = {
            market.pk: [t.token_id for t in market.tokens.all()]
            for market in changelist.result_list
        }
        ids = [token for group in tokens.values() for token in group]
        try:
            tops = latest_many_live(get_bus(), ids) if ids else {}
        except Exception:  # the bus (Redis) being down must not take the admin with it
            tops = None
        _page.tops = tops
        _page.tokens = tokens
        return changelist

    @admin.display(description="book (live)")
    def book(self, obj: Market) -> str:
        tops = getattr(_page, "tops", None)
        if tops is None:
            return "bus unavailable"
        cells = []
        for token_id in getattr(_page, "tokens", {}).get(obj.pk, []):
            top = tops.get(token_id)
            if top is None:
                cells.append("no book")
            else:
                state = "fresh" if top.fresh else "STALE"
                cells.append(f"{top.best_bid or '–'}/{top.best_ask or '–'} {state}")
        return " · ".join(cells) or "no tokens"


@admin.register(MarketResolution)
class MarketResolutionAdmin(ViewOnlyMixin, admin.ModelAdmin):
    list_display = (
        "market",
        "state_",
        "winning_outcome",
        "source",
        "detected_at",
        "consumed_at",
        "reason",
    )
    list_filter = ("state", "source", ("consumed_at", admin.EmptyFieldListFilter))
    search_fields = ("market__question", "=market__condition_id")
    list_select_related = ("market",)
    ordering = ("-detected_at",)

    @admin.display(description="state", ordering="state")
    def state_(self, obj: MarketResolution) -> str:
        return status_badge(obj.state, obj.get_state_display())


@admin.register(FeedHealth)
class FeedHealthAdmin(ViewOnlyMixin, admin.ModelAdmin):
    list_display = (
        "shard",
        "connections",
        "subscribed_tokens",
        "last_message",
        "messages",
        "stale_tokens",
        "resyncs",
        "hash_mismatches",
        "reconnects",
        "bus_failures",
        "bus_error",
        "reported",
    )
    ordering = ("shard",)

    @admin.display(description="last message", ordering="last_message_at")
    def last_message(self, obj: FeedHealth) -> str:
        return age(obj.last_message_at, stale_after=FEED_STALE_AFTER)

    @admin.display(description="reported", ordering="updated_at")
    def reported(self, obj: FeedHealth) -> str:
        return age(obj.updated_at, stale_after=FEED_STALE_AFTER)
