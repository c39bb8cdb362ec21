"""Operator admin for tenants, their API keys and their trader mappings.

Keys are minted, rotated and revoked only through partners.services; the full key is rendered
once, in the response to the request that created it, and never stored (not in the session,
not in a message cookie). The secret hash is never displayed.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers

from accounts.admin import ReadOnlyAdminMixin, UUIDSearchMixin, confirm_action, run_service_action
from accounts.services import login_redirect_validate, normalize_origin
from core.errors import DomainError
from partners.models import ALL_SCOPES, ApiKey, Tenant, TenantUser
from partners.services import (
    IssuedKey,
    apikey_create,
    apikey_revoke,
    apikey_rotate,
    tenant_create,
    tenant_set_enabled,
)

ISSUED_KEYS_TEMPLATE = "admin/partners/apikey/issued.html"


def masked_key(key: ApiKey) -> str:
    return f"pk_{key.prefix}_…"


def scope_list(key: ApiKey) -> str:
    return ", ".join(key.scopes or [])


# --- Tenants ----------------------------------------------------------------------------------
class OriginListField(forms.CharField):
    """The redirect allowlist as one origin per line; each is normalised (and junk refused)
    by accounts.services.normalize_origin, the same rule as `manage.py tenant allow-redirect`."""

    widget = forms.Textarea(attrs={"rows": 4, "cols": 60})

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return "\n".join(str(v) for v in value)
        return value

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        if isinstance(value, list | tuple):
            value = "\n".join(str(v) for v in value)
        text = super().to_python(value) or ""
        origins: list[str] = []
        problems: list[str] = []
        for line in text.replace(",", "\n").splitlines():
            candidate = line.strip()
            if not candidate:
                continue
            try:
                origins.append(normalize_origin(candidate))
            except DomainError as exc:
                problems.append(f"{candidate}: {exc.message}")
        if problems:
            raise forms.ValidationError(problems)
        return list(dict.fromkeys(origins))


class TenantForm(forms.ModelForm):
    redirect_allowlist = OriginListField(
        required=False,
        help_text=(
            "Origins a login link may redirect to, one per line: scheme://host[:port]. "
            "https only, except localhost."
        ),
    )

    class Meta:
        model = Tenant
        fields = (
            "slug",
            "name",
            "enabled",
            "rate_limit_per_second",
            "rate_limit_per_minute",
            "redirect_allowlist",
            "default_landing_url",
            "day_boundary_tz",
            "day_boundary_time",
        )

    def clean_day_boundary_tz(self) -> str:
        name = self.cleaned_data["day_boundary_tz"].strip()
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise forms.ValidationError(f"{name!r} is not an IANA time zone.") from exc
        return name

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        landing = (cleaned.get("default_landing_url") or "").strip()
        if landing and "redirect_allowlist" in cleaned:
            # The login-link service's own rule, checked against the allowlist being saved.
            candidate = Tenant(redirect_allowlist=cleaned["redirect_allowlist"])
            try:
                login_redirect_validate(tenant=candidate, redirect_url=landing)
            except DomainError:
                self.add_error(
                    "default_landing_url",
                    "Use a path on the trader UI (/app/...) or an absolute URL whose origin is "
                    "on the redirect allowlist.",
                )
        return cleaned


class ApiKeyColumnsMixin:
    """The columns every API key listing shows; never the secret or its hash."""

    @admin.display(description="key", ordering="prefix")
    def key(self, obj: ApiKey) -> str:
        return masked_key(obj)

    @admin.display(description="scopes")
    def scopes_(self, obj: ApiKey) -> str:
        return scope_list(obj)

    @admin.display(boolean=True)
    def active(self, obj: ApiKey) -> bool:
        return obj.is_active


class ApiKeyInline(ApiKeyColumnsMixin, ReadOnlyAdminMixin, admin.TabularInline):
    model = ApiKey
    fields = ("key", "name", "scopes_", "created_at", "last_used_at", "revoked_at", "active")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ("-created_at",)
    verbose_name_plural = "API keys"

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiKey]:
        return super().get_queryset(request).select_related("tenant")


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    form = TenantForm
    list_display = ("slug", "name", "enabled", "limits", "created_at")
    list_filter = ("enabled", "created_at")
    search_fields = ("slug", "name")
    ordering = ("slug",)
    fieldsets = (
        (None, {"fields": ("slug", "name", "enabled")}),
        ("Rate limits", {"fields": ("rate_limit_per_second", "rate_limit_per_minute")}),
        ("Login links", {"fields": ("redirect_allowlist", "default_landing_url")}),
        (
            "Day boundary",
            {
                "fields": ("day_boundary_tz", "day_boundary_time"),
                "description": "Local time (IANA zone) at which day_start_equity is taken.",
            },
        ),
        ("Dates", {"fields": ("created_at", "updated_at")}),
    )
    inlines = (ApiKeyInline,)
    actions = ("enable_tenants", "disable_tenants")

    def get_readonly_fields(
        self, request: HttpRequest, obj: Tenant | None = None
    ) -> tuple[str, ...]:
        # The slug is the tenant's identity on the wire (whoami, logs): fixed once created.
        return ("created_at", "updated_at") + (("slug",) if obj is not None else ())

    def has_delete_permission(self, request: HttpRequest, obj: Tenant | None = None) -> bool:
        return False  # disable instead: mappings and accounts are PROTECTed and kept forever

    @admin.display(description="limits")
    def limits(self, obj: Tenant) -> str:
        return f"{obj.rate_limit_per_second}/s · {obj.rate_limit_per_minute}/min"

    def save_model(
        self, request: HttpRequest, obj: Tenant, form: forms.ModelForm[Any], change: bool
    ) -> None:
        if not change:
            created = tenant_create(
                slug=obj.slug,
                name=obj.name,
                enabled=obj.enabled,
                rate_limit_per_second=obj.rate_limit_per_second,
                rate_limit_per_minute=obj.rate_limit_per_minute,
            )
            # Settings tenant_create does not take (allowlist, landing, day boundary) are plain
            # attributes; store them on the row the service created.
            obj.pk, obj.created_at = created.pk, created.created_at
            obj._state.adding = False
            obj.save(
                update_fields=[
                    "redirect_allowlist",
                    "default_landing_url",
                    "day_boundary_tz",
                    "day_boundary_time",
                ]
            )
            return
        # Write only what the operator changed, so a concurrent `tenant allow-redirect` or
        # enable/disable is not overwritten with this form's stale copy.
        changed = [name for name in form.changed_data if name != "enabled"]
        if changed:
            obj.save(update_fields=[*changed, "updated_at"])
        if "enabled" in form.changed_data:
            tenant_set_enabled(tenant=obj, enabled=obj.enabled)

    @admin.action(description="Enable selected tenants")
    def enable_tenants(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        run_service_action(
            self,
            request,
            queryset,
            call=lambda t: tenant_set_enabled(tenant=t, enabled=True),
            done="Enabled",
        )

    @admin.action(description="Disable selected tenants")
    def disable_tenants(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        run_service_action(
            self,
            request,
            queryset,
            call=lambda t: tenant_set_enabled(tenant=t, enabled=False),
            done=f"Disabled (their keys get 404 within {settings.API_KEY_CACHE_SECONDS:g} s)",
        )


# --- API keys ---------------------------------------------------------------------------------
class ApiKeyCreateForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=[(scope, scope) for scope in ALL_SCOPES],
        initial=list(ALL_SCOPES),
        widget=forms.CheckboxSelectMultiple,
        help_text="All three by default; accounts:read alone makes a read-only key.",
    )

    class Meta:
        model = ApiKey
        fields = ("tenant", "name", "scopes")


class KeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", "active"), ("revoked", "revoked"), ("expired", "expired")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> QuerySet[ApiKey]:
        now = timezone.now()
        if self.value() == "active":
            return queryset.filter(
                Q(revoked_at__isnull=True) & (Q(expires_at__isnull=True) | Q(expires_at__gt=now))
            )
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        return queryset


_ISSUED_ATTR = "_polysim_issued_keys"


@admin.register(ApiKey)
class ApiKeyAdmin(ApiKeyColumnsMixin, admin.ModelAdmin):
    """Add = apikey_create (full key shown once); existing keys are view-only; revoke and
    rotate are actions. Keys are never deleted (revoked keys are the audit trail)."""

    list_display = (
        "key",
        "tenant",
        "name",
        "scopes_",
        "created_at",
        "last_used_at",
        "revoked_at",
        "active",
    )
    list_filter = (KeyStatusFilter, "tenant")
    list_select_related = ("tenant",)
    search_fields = ("=prefix", "name", "tenant__slug")
    ordering = ("-created_at",)
    actions = ("revoke_keys", "rotate_keys")
    view_fields = (
        "key",
        "tenant",
        "name",
        "scopes_",
        "active",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    )

    # --- pages
    def get_fieldsets(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        if obj is None:
            return [(None, {"fields": ("tenant", "name", "scopes")})]
        return [(None, {"fields": self.view_fields})]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        return () if obj is None else self.view_fields

    def get_form(
        self, request: HttpRequest, obj: ApiKey | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs["form"] = ApiKeyCreateForm
        return super().get_form(request, obj, change=change, **kwargs)

    def has_change_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        return False  # a key's secret, tenant and scopes never change; rotate instead

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        return False

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[ApiKey], search_term: str
    ) -> tuple[QuerySet[ApiKey], bool]:
        # A pasted `pk_<prefix>_…` (or a whole key) finds its row by prefix.
        term = search_term.strip()
        if term.startswith("pk_"):
            term = term[3:].split("_", 1)[0]
        return super().get_search_results(request, queryset, term)

    # --- add = apikey_create
    def save_model(
        self, request: HttpRequest, obj: ApiKey, form: forms.ModelForm[Any], change: bool
    ) -> None:
        if change:
            raise PermissionDenied  # unreachable: has_change_permission is False
        issued = apikey_create(
            tenant=form.cleaned_data["tenant"],
            name=form.cleaned_data.get("name") or "",
            scopes=list(form.cleaned_data["scopes"]),
        )
        # The admin goes on (log entry, response) with `obj`: make it the row the service made.
        for field in ApiKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(issued.api_key, field.attname))
        obj._state.adding = False
        obj._state.db = issued.api_key._state.db
        setattr(request, _ISSUED_ATTR, [issued])

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None
    ) -> HttpResponse:
        issued: list[IssuedKey] = getattr(request, _ISSUED_ATTR, [])
        if not issued:
            return super().response_add(request, obj, post_url_continue)
        return self._issued_page(request, issued, title="API key created")

    def _issued_page(
        self, request: HttpRequest, issued: list[IssuedKey], *, title: str
    ) -> HttpResponse:
        """The only page that ever shows full keys: rendered in the response to the POST that
        created them (never redirected through a message or the session), marked no-store."""
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "issued": [
                {
                    "key": i.api_key,
                    "masked": masked_key(i.api_key),
                    "raw": i.raw_key,
                    "scopes": scope_list(i.api_key),
                }
                for i in issued
            ],
        }
        request.current_app = self.admin_site.name
        response = TemplateResponse(request, ISSUED_KEYS_TEMPLATE, context)
        add_never_cache_headers(response)
        response["Cache-Control"] = "no-store, no-cache, must-revalidate, max-age=0, private"
        return response

    # --- actions
    @admin.action(description="Revoke selected API keys")
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> HttpResponse | None:
        page = confirm_action(
            self,
            request,
            queryset,
            action="revoke_keys",
            title="Revoke API keys?",
            warning=(
                "Revoked keys stop working everywhere within "
                f"{settings.API_KEY_CACHE_SECONDS:g} s. This cannot be undone."
            ),
        )
        if page is not None:
            return page

        def revoke(key: ApiKey) -> None:
            apikey_revoke(api_key=key)
            self.log_change(request, key, "Revoked")

        run_service_action(self, request, queryset, call=revoke, done="Revoked")
        return None

    @admin.action(description="Rotate selected API keys (issue a replacement; old key stays valid)")
    def rotate_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> HttpResponse | None:
        issued: list[IssuedKey] = []
        for key in queryset.select_related("tenant"):
            try:
                new = apikey_rotate(api_key=key)
            except DomainError as exc:
                self.message_user(request, f"{key}: {exc.code}: {exc.message}", messages.ERROR)
                continue
            self.log_addition(request, new.api_key, f"Rotated from {masked_key(key)}")
            issued.append(new)
        if not issued:
            return None
        self.message_user(
            request,
            "Replacement keys issued. Revoke the old ones once the partner has deployed these.",
            messages.WARNING,
        )
        return self._issued_page(request, issued, title="API keys rotated")


# --- Trader mappings --------------------------------------------------------------------------
@admin.register(TenantUser)
class TenantUserAdmin(UUIDSearchMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("tenant", "external_id", "user_email", "created_at")
    list_filter = ("tenant",)
    list_select_related = ("tenant", "user")
    search_fields = ("external_id", "user__email", "tenant__slug")
    uuid_search_fields = ("id",)
    ordering = ("-created_at",)
    fields = ("id", "tenant", "external_id", "user", "metadata", "created_at")

    @admin.display(description="user", ordering="user__email")
    def user_email(self, obj: TenantUser) -> str:
        return obj.user.email
