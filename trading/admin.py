"""Read-only operator views of accounts, orders and fills: the engine is their only writer.
The Account admin lives here, not in accounts, because its actions (close, reset) are
trading's lifecycle services and accounts sits below trading."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html

from accounts.admin import ReadOnlyAdminMixin, UUIDSearchMixin, confirm_action, run_service_action
from accounts.models import Account, LedgerEntry
from trading.models import Fill, Order
from trading.services import account_close, account_reset

LEDGER_INLINE_LIMIT = 50


# --- Accounts -------------------------------------------------------------------------------
class RecentLedgerFormSet(BaseInlineFormSet):
    """Only the newest LEDGER_INLINE_LIMIT entries (the full ledger is one click away)."""

    def get_queryset(self) -> QuerySet[LedgerEntry]:
        if not hasattr(self, "_recent"):
            self._recent = super().get_queryset().order_by("-id")[:LEDGER_INLINE_LIMIT]
        return self._recent


class LedgerEntryInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = LedgerEntry
    formset = RecentLedgerFormSet
    fields = ("created_at", "epoch", "kind", "amount", "balance_after", "memo", "order_id")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    verbose_name_plural = f"ledger (newest {LEDGER_INLINE_LIMIT})"


@admin.register(Account)
class AccountAdmin(UUIDSearchMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """View-only (an admin save would write a stale copy of the balances over the engine's,
    outside the account row lock). Partners change rules/metadata through PATCH; operators
    close or reset through the actions below, which call trading.services."""

    list_display = (
        "id",
        "owner_email",
        "tenant",
        "external_id",
        "stage",
        "status",
        "cash",
        "reserved_cash",
        "epoch",
        "created_at",
    )
    list_filter = ("tenant", "stage", "status")
    list_select_related = ("owner", "tenant")
    search_fields = ("id", "external_id", "owner__email")
    uuid_search_fields = ("id",)
    ordering = ("-created_at",)
    date_hierarchy = "created_at"
    fieldsets = (
        (None, {"fields": ("id", "owner", "tenant", "external_id", "stage", "status", "epoch")}),
        (
            "Money (a cache of the ledger; read-only)",
            {
                "fields": (
                    "starting_balance",
                    "cash",
                    "reserved_cash",
                    "available",
                    "realized_pnl",
                    "fees_paid",
                    "high_water_mark",
                    "max_drawdown",
                    "max_drawdown_pct",
                    "closed_equity",
                    "trading_days",
                    "last_trading_day",
                    "last_fill_seq",
                    "ledger_link",
                )
            },
        ),
        ("Partner data", {"fields": ("rules", "metadata")}),
        ("Dates", {"fields": ("created_at", "updated_at", "closed_at", "last_reset_at")}),
    )
    readonly_fields = ("available", "ledger_link")
    inlines = (LedgerEntryInline,)
    actions = ("close_accounts", "reset_accounts")

    @admin.display(description="owner", ordering="owner__email")
    def owner_email(self, obj: Account) -> str:
        return obj.owner.email

    @admin.display(description="available cash")
    def available(self, obj: Account) -> object:
        return obj.available_cash

    @admin.display(description="ledger")
    def ledger_link(self, obj: Account) -> str:
        url = reverse("admin:accounts_ledgerentry_changelist")
        return format_html('<a href="{}?account__exact={}">all ledger entries</a>', url, obj.pk)

    @admin.action(description="Close selected accounts")
    def close_accounts(
        self, request: HttpRequest, queryset: QuerySet[Account]
    ) -> HttpResponse | None:
        page = confirm_action(
            self,
            request,
            queryset,
            action="close_accounts",
            title="Close accounts?",
            warning="Open orders are cancelled and the accounts are frozen. Positions are kept.",
        )
        if page is not None:
            return page
        run_service_action(
            self, request, queryset, call=lambda a: account_close(account=a), done="Closed"
        )
        return None

    @admin.action(description="Reset selected accounts")
    def reset_accounts(
        self, request: HttpRequest, queryset: QuerySet[Account]
    ) -> HttpResponse | None:
        page = confirm_action(
            self,
            request,
            queryset,
            action="reset_accounts",
            title="Reset accounts?",
            warning=(
                "Open orders are cancelled, positions are closed without cash effect and cash "
                "returns to the starting balance in a new epoch. History is kept."
            ),
        )
        if page is not None:
            return page
        run_service_action(
            self, request, queryset, call=lambda a: account_reset(account=a), done="Reset"
        )
        return None


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
