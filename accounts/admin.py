"""Operator admin for users, accounts, the ledger and the email outbox.

Balances are a cache of the ledger written only by accounts/trading services under the account
row lock, so nothing here saves an Account: the account pages are view-only and the two
operator actions (close, reset) call trading.services. The ledger is append-only (a database
trigger refuses UPDATE/DELETE), so its admin is read-only too.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm
from django.contrib.auth.forms import UserChangeForm as DjangoUserChangeForm
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from accounts.models import (
    EmailOutbox,
    LedgerEntry,
    TraderApiKey,
    User,
    normalize_email,
)
from core.errors import DomainError

CONFIRM_LIST_LIMIT = 200


# --- Shared helpers (partners/admin.py and trading/admin.py use these too) -----------------
class ReadOnlyAdminMixin:
    """View-only admin: no add, change or delete, whoever asks. Detail pages still render
    (Django shows every field read-only when the user only has the view permission)."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class UUIDSearchMixin:
    """A search term that is a whole UUID is matched exactly (index-friendly) against
    `uuid_search_fields`; anything else goes through the usual `search_fields`."""

    uuid_search_fields: tuple[str, ...] = ()

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        try:
            value = uuid.UUID(search_term.strip())
        except ValueError:
            return super().get_search_results(request, queryset, search_term)  # type: ignore[misc]
        match = Q()
        for field in self.uuid_search_fields:
            match |= Q(**{field: value})
        return queryset.filter(match), False


def run_service_action(
    modeladmin: admin.ModelAdmin[Any],
    request: HttpRequest,
    queryset: QuerySet[Any],
    *,
    call: Callable[[Any], object],
    done: str,
) -> int:
    """Call `call(obj)` for each selected object, one message per failure
    (DomainError code and message) and one summary message. Returns the success count."""
    succeeded = 0
    for obj in queryset:
        try:
            call(obj)
        except DomainError as exc:
            modeladmin.message_user(request, f"{obj}: {exc.code}: {exc.message}", messages.ERROR)
        else:
            succeeded += 1
    if succeeded:
        modeladmin.message_user(request, f"{done}: {succeeded}.", messages.SUCCESS)
    return succeeded


def confirm_action(
    modeladmin: admin.ModelAdmin[Any],
    request: HttpRequest,
    queryset: QuerySet[Any],
    *,
    action: str,
    title: str,
    warning: str,
) -> HttpResponse | None:
    """An intermediate "are you sure?" page for destructive actions (like Django's own
    delete_selected). Returns the page to render, or None once the operator confirmed."""
    if request.POST.get("confirm") == "yes":
        return None
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "opts": modeladmin.opts,
        "objects": list(queryset[:CONFIRM_LIST_LIMIT]),
        "count": queryset.count(),
        "pks": list(queryset.values_list("pk", flat=True)),
        "action": action,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "warning": warning,
    }
    request.current_app = modeladmin.admin_site.name
    return TemplateResponse(request, "admin/polysim/confirm_action.html", context)


# --- Users ----------------------------------------------------------------------------------
class _EmailFormMixin:
    """One user per email, compared trimmed and lowercased (the model's CHECK insists)."""

    cleaned_data: dict[str, Any]
    instance: User

    def clean_email(self) -> str:
        email = normalize_email(self.cleaned_data["email"])
        clash = User.objects.filter(email__iexact=email)
        if self.instance.pk:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            raise forms.ValidationError("A user with this email already exists.")
        return email


class UserCreationForm(_EmailFormMixin, AdminUserCreationForm):
    class Meta:
        model = User
        fields = ("email",)


class UserChangeForm(_EmailFormMixin, DjangoUserChangeForm):
    class Meta:
        model = User
        fields = "__all__"


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    """Django's UserAdmin adapted to the email-only user (no username, no names)."""

    form = UserChangeForm
    add_form = UserCreationForm
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        (
            "Permissions",
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")},
        ),
        ("Important dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": ("email", "usable_password", "password1", "password2"),
            },
        ),
    )
    list_display = ("email", "is_staff", "is_superuser", "is_active", "date_joined", "last_login")
    list_filter = ("is_staff", "is_superuser", "is_active", "groups")
    search_fields = ("email",)
    ordering = ("email",)
    readonly_fields = ("last_login", "date_joined")


@admin.register(LedgerEntry)
class LedgerEntryAdmin(UUIDSearchMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "account",
        "epoch",
        "kind",
        "amount",
        "balance_after",
        "memo",
        "created_at",
    )
    list_filter = ("kind",)
    list_select_related = ("account",)
    # A whole UUID (account, order or fill id) is matched exactly; other text searches memos.
    search_fields = ("memo",)
    uuid_search_fields = ("account_id", "order_id", "fill_id")
    ordering = ("-id",)
    show_full_result_count = False


@admin.register(EmailOutbox)
class EmailOutboxAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "kind",
        "to_email",
        "status",
        "attempts",
        "created_at",
        "sent_at",
        "error",
    )
    list_filter = ("status", "kind")
    search_fields = ("to_email",)
    ordering = ("-id",)
    show_full_result_count = False

    @admin.display(description="last error")
    def error(self, obj: EmailOutbox) -> str:
        return obj.last_error[:120]


@admin.register(TraderApiKey)
class TraderApiKeyAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """View-only: keys are minted by `manage.py traderkey create` (the secret is shown once,
    never here) and revoked by the action below, which calls the service."""

    list_display = ("masked", "user", "name", "created_at", "last_used_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    list_select_related = ("user",)
    search_fields = ("prefix", "user__email", "name")
    ordering = ("-created_at",)
    exclude = ("secret_hash",)
    actions = ("revoke_keys",)

    @admin.display(description="key", ordering="prefix")
    def masked(self, obj: TraderApiKey) -> str:
        return f"tk_{obj.prefix}_…"

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[TraderApiKey]) -> None:
        from accounts.services import trader_key_revoke

        run_service_action(
            self, request, queryset, call=lambda k: trader_key_revoke(key=k), done="Revoked"
        )
