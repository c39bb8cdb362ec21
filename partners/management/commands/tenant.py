"""`manage.py tenant create|enable|disable|allow-redirect`: operator commands for tenants.

Runbooks and scripts depend on these exact forms; every change goes through
partners.services, and any refusal is a CommandError (non-zero exit) with the reason.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.errors import DomainError
from partners.models import Tenant
from partners.services import tenant_allow_redirect, tenant_create, tenant_set_enabled


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def tenant_by_slug(slug: str) -> Tenant:
    tenant = Tenant.objects.filter(slug=slug).first()
    if tenant is None:
        raise CommandError(f"unknown tenant {slug!r}")
    return tenant


def error_text(exc: DomainError | ValidationError) -> str:
    """A service refusal as one readable line (DomainError, or a model ValidationError from
    full_clean such as a malformed slug)."""
    if isinstance(exc, DomainError):
        return exc.message
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
    return " ".join(exc.messages)


class Command(BaseCommand):
    help = "Create tenants, enable or disable them, and allowlist login-link redirect origins."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(
            dest="subcommand", required=True, metavar="{create,enable,disable,allow-redirect}"
        )

        create = sub.add_parser("create", help="Create a tenant.")
        create.add_argument("slug", help="URL-safe identifier, e.g. acme")
        create.add_argument("--name", required=True, help="Display name of the firm")
        create.add_argument("--disabled", action="store_true", help="Create it disabled")
        create.add_argument("--rate-limit-per-second", type=positive_int, default=None)
        create.add_argument("--rate-limit-per-minute", type=positive_int, default=None)

        enable = sub.add_parser("enable", help="Enable a tenant.")
        enable.add_argument("slug")
        disable = sub.add_parser(
            "disable", help="Disable a tenant (its keys get 404 on the whole partner API)."
        )
        disable.add_argument("slug")

        allow = sub.add_parser(
            "allow-redirect", help="Add an origin to the tenant's login-link redirect allowlist."
        )
        allow.add_argument("slug")
        allow.add_argument("origin", help="scheme://host[:port]; https unless localhost")

    def handle(self, *args: Any, **options: Any) -> None:
        subcommand = options["subcommand"]
        try:
            if subcommand == "create":
                self._create(options)
            elif subcommand in ("enable", "disable"):
                self._set_enabled(options["slug"], enabled=subcommand == "enable")
            elif subcommand == "allow-redirect":
                self._allow_redirect(options["slug"], options["origin"])
            else:  # pragma: no cover - argparse refuses unknown subcommands
                raise CommandError(f"unknown subcommand {subcommand!r}")
        except (DomainError, ValidationError) as exc:
            raise CommandError(error_text(exc)) from exc

    def _create(self, options: dict[str, Any]) -> None:
        tenant = tenant_create(
            slug=options["slug"],
            name=options["name"],
            enabled=not options["disabled"],
            rate_limit_per_second=options["rate_limit_per_second"],
            rate_limit_per_minute=options["rate_limit_per_minute"],
        )
        state = "enabled" if tenant.enabled else "disabled"
        self.stdout.write(
            self.style.SUCCESS(
                f"Created tenant {tenant.slug!r} ({tenant.name}): {state}, "
                f"limits {tenant.rate_limit_per_second}/s and {tenant.rate_limit_per_minute}/min"
            )
        )

    def _set_enabled(self, slug: str, *, enabled: bool) -> None:
        tenant = tenant_set_enabled(tenant=tenant_by_slug(slug), enabled=enabled)
        state = "enabled" if tenant.enabled else "disabled"
        self.stdout.write(self.style.SUCCESS(f"Tenant {tenant.slug!r} is {state}"))

    def _allow_redirect(self, slug: str, origin: str) -> None:
        tenant = tenant_by_slug(slug)
        try:
            tenant = tenant_allow_redirect(tenant=tenant, origin=origin)
        except DomainError as exc:
            raise CommandError(f"bad origin {origin!r}: {exc.message}") from exc
        self.stdout.write(
            self.style.SUCCESS(
                f"Tenant {tenant.slug!r} redirect allowlist: {', '.join(tenant.redirect_allowlist)}"
            )
        )
