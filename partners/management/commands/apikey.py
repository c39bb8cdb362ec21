"""`manage.py apikey create|revoke|rotate|list`: operator commands for partner API keys.

`create` and `rotate` print the new full key ALONE on the LAST line of stdout (scripts read it
with `tail -n 1`); it is shown once and only its hash is stored. Nothing here ever prints a
secret again: keys are named by their public prefix, `pk_<prefix>_…`.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.errors import DomainError
from partners import keys
from partners.management.commands.tenant import tenant_by_slug
from partners.models import ALL_SCOPES, ApiKey
from partners.services import IssuedKey, apikey_create, apikey_revoke, apikey_rotate

_PREFIX_RE = re.compile(rf"^[a-z0-9]{{{keys.PREFIX_LEN}}}$")


def prefix_from_reference(reference: str) -> str:
    """`abcd1234`, `pk_abcd1234`, `pk_abcd1234_…` or a whole key → `abcd1234`.
    Never echoes its input: it may hold a secret."""
    text = reference.strip()
    if text.startswith(keys.KEY_PREFIX):
        text = text[len(keys.KEY_PREFIX) :].split("_", 1)[0]
    if not _PREFIX_RE.match(text):
        raise CommandError(
            f"expected a key prefix ({keys.PREFIX_LEN} lowercase letters/digits), "
            "pk_<prefix>, or the full key"
        )
    return text


def key_by_reference(reference: str) -> ApiKey:
    prefix = prefix_from_reference(reference)
    api_key = ApiKey.objects.select_related("tenant").filter(prefix=prefix).first()
    if api_key is None:
        raise CommandError(f"unknown API key pk_{prefix}_…")
    return api_key


def parse_scopes(text: str | None) -> list[str] | None:
    if text is None:
        return None
    scopes = [part.strip() for part in text.split(",") if part.strip()]
    if not scopes:
        raise CommandError(f"--scopes needs at least one of: {', '.join(ALL_SCOPES)}")
    return scopes


def masked(api_key: ApiKey) -> str:
    return f"pk_{api_key.prefix}_…"


def key_state(api_key: ApiKey) -> str:
    if api_key.revoked_at is not None:
        return f"revoked {api_key.revoked_at:%Y-%m-%d %H:%M:%S}Z"
    return "active" if api_key.is_active else "expired"


class Command(BaseCommand):
    help = "Create, revoke, rotate and list partner API keys."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(
            dest="subcommand", required=True, metavar="{create,revoke,rotate,list}"
        )

        create = sub.add_parser(
            "create", help="Mint a key for a tenant; the full key is the last line of output."
        )
        create.add_argument("slug", help="tenant slug")
        create.add_argument(
            "--scopes",
            default=None,
            help=f"comma-separated, default all: {','.join(ALL_SCOPES)} "
            "(accounts:read alone makes a read-only key)",
        )
        create.add_argument("--name", default="", help="a label for the key, e.g. production")

        revoke = sub.add_parser("revoke", help="Revoke a key (effective everywhere within 5 s).")
        revoke.add_argument("key", metavar="PREFIX", help="prefix, pk_<prefix>, or the full key")

        rotate = sub.add_parser(
            "rotate",
            help="Issue a replacement with the same tenant and scopes; the old key stays "
            "valid until revoked. The new key is the last line of output.",
        )
        rotate.add_argument("key", metavar="PREFIX", help="prefix, pk_<prefix>, or the full key")

        listing = sub.add_parser("list", help="List keys (never their secrets).")
        listing.add_argument("slug", nargs="?", default=None, help="only this tenant's keys")

    def handle(self, *args: Any, **options: Any) -> None:
        subcommand = options["subcommand"]
        try:
            if subcommand == "create":
                tenant = tenant_by_slug(options["slug"])
                issued = apikey_create(
                    tenant=tenant, name=options["name"], scopes=parse_scopes(options["scopes"])
                )
                self._print_issued("Created", issued)
            elif subcommand == "revoke":
                self._revoke(options["key"])
            elif subcommand == "rotate":
                issued = apikey_rotate(api_key=key_by_reference(options["key"]))
                self._print_issued(
                    "Rotated: issued",
                    issued,
                    note="The old key stays valid until you revoke it.",
                )
            elif subcommand == "list":
                self._list(options["slug"])
            else:  # pragma: no cover - argparse refuses unknown subcommands
                raise CommandError(f"unknown subcommand {subcommand!r}")
        except DomainError as exc:
            raise CommandError(exc.message) from exc

    def _print_issued(self, verb: str, issued: IssuedKey, *, note: str = "") -> None:
        api_key = issued.api_key
        self.stdout.write(
            self.style.SUCCESS(
                f"{verb} API key {masked(api_key)} for tenant {api_key.tenant.slug!r}"
            )
        )
        if api_key.name:
            self.stdout.write(f"  name:   {api_key.name}")
        self.stdout.write(f"  scopes: {', '.join(api_key.scopes)}")
        if note:
            self.stdout.write(note)
        self.stdout.write("The full key is shown once and cannot be recovered; store it now:")
        # Last line, alone: scripts take it with `tail -n 1`.
        self.stdout.write(issued.raw_key)

    def _revoke(self, reference: str) -> None:
        api_key = key_by_reference(reference)
        already = api_key.revoked_at is not None
        api_key = apikey_revoke(api_key=api_key)
        if already:
            self.stdout.write(f"{masked(api_key)} was already {key_state(api_key)}")
            return
        self.stdout.write(
            self.style.SUCCESS(
                f"Revoked {masked(api_key)} of tenant {api_key.tenant.slug!r}"
                f"{f' ({api_key.name})' if api_key.name else ''}; every process refuses it within "
                f"{settings.API_KEY_CACHE_SECONDS:g} s"
            )
        )

    def _list(self, slug: str | None) -> None:
        queryset = ApiKey.objects.select_related("tenant").order_by("tenant__slug", "created_at")
        if slug is not None:
            queryset = queryset.filter(tenant=tenant_by_slug(slug))
        for api_key in queryset:
            last_used = (
                f"{api_key.last_used_at:%Y-%m-%d %H:%M}Z" if api_key.last_used_at else "never"
            )
            self.stdout.write(
                f"{masked(api_key)}  {api_key.tenant.slug}  {key_state(api_key)}  "
                f"scopes={','.join(api_key.scopes)}  created={api_key.created_at:%Y-%m-%d}  "
                f"last_used={last_used}  name={api_key.name!r}"
            )
