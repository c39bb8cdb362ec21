"""Read-only operator views of orders and fills: the engine is their only writer."""

from __future__ import annotations

from django.contrib import admin

from accounts.admin import ReadOnlyAdminMixin, UUIDSearchMixin
from trading.models import Fill, Order


@admin.register(Order)
class OrderAdmin(UUIDSearchMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "account",
        "side",
        "type",
        "time_in_force",
        "price",
        "size",
        "amount",
        "filled_size",
        "status",
        "reason",
        "created_at",
    )
    list_filter = ("status", "side", "type", "time_in_force", "post_only")
    list_select_related = ("account",)
    # A whole UUID matches the order or its account exactly; other text: ids of the market.
    search_fields = ("client_order_id", "token_id", "market_id")
    uuid_search_fields = ("id", "account_id")
    ordering = ("-created_at",)
    date_hierarchy = "created_at"
    show_full_result_count = False


@admin.register(Fill)
class FillAdmin(UUIDSearchMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "account",
        "seq",
        "epoch",
        "kind",
        "side",
        "price",
        "size",
        "notional",
        "fee",
        "liquidity",
        "realized_pnl",
        "filled_at",
    )
    list_filter = ("kind", "side", "liquidity", "price_source")
    list_select_related = ("account",)
    search_fields = ("token_id", "market_id", "trigger_key")
    uuid_search_fields = ("id", "account_id", "order_id")
    ordering = ("-filled_at",)
    date_hierarchy = "filled_at"
    show_full_result_count = False
