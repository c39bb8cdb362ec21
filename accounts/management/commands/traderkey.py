"""`manage.py traderkey create EMAIL [--name N] | revoke PREFIX`: personal trader API keys.

`create` prints the new full key ALONE on the LAST line of stdout (scripts read it with
`tail -n 1`); it is shown once and only its hash is stored. Nothing here ever prints a secret
again: keys are named by their public prefix, `tk_<prefix>_…`.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import TraderApiKey, User, normalize_email
from accounts.services import trader_key_create, trader_key_revoke
from accounts.services.trader_keys import KEY_PREFIX, PREFIX_LEN

_PREFIX_RE = re.compile(rf"^[a-z0-9]{{{PREFIX_LEN}}}$")


def prefix_from_reference(reference: str) -> str:
    """`abcd1234`, `tk_abcd1234`, `tk_abcd1234_…` or a whole key → `abcd1234`.
    Never echoes its input: it may hold a secret."""
    text = reference.strip()
    if text.startswith(KEY_PREFIX):
        text = text[len(KEY_PREFIX) :].split("_", 1)[0]
    if not _PREFIX_RE.match(text):
        raise CommandError(
            f"expected a key prefix ({PREFIX_LEN} lowercase letters/digits), "
            "tk_<prefix>, or the full key"
        )
    return text


def masked(key: TraderApiKey) -> str:
    return f"{KEY_PREFIX}{key.prefix}_…"


class Command(BaseCommand):
    help = "Create and revoke personal trader API keys."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True, metavar="{create,revoke}")
        create = sub.add_parser(
            "create", help="Mint a key for a user; the full key is the last line of output."
        )
        create.add_argument("email", help="the trader's email")
        create.add_argument("--name", default="", help="a label for the key, e.g. my-bot")
        revoke = sub.add_parser("revoke", help="Revoke a key (effective everywhere within 5 s).")
        revoke.add_argument("key", metavar="PREFIX", help="prefix, tk_<prefix>, or the full key")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["subcommand"] == "create":
            self._create(options["email"], options["name"])
        else:
            self._revoke(options["key"])

    def _create(self, email: str, name: str) -> None:
        user = User.objects.filter(email=normalize_email(email)).first()
        if user is None:
            raise CommandError(f"no user with email {normalize_email(email)!r}")
        key, raw = trader_key_create(user=user, name=name)
        self.stdout.write(self.style.SUCCESS(f"Created trader API key {masked(key)} for {user}"))
        if key.name:
            self.stdout.write(f"  name: {key.name}")
        self.stdout.write("The full key is shown once and cannot be recovered; store it now:")
        # Last line, alone: scripts take it with `tail -n 1`.
        self.stdout.write(raw)

    def _revoke(self, reference: str) -> None:
        prefix = prefix_from_reference(reference)
        key = TraderApiKey.objects.select_related("user").filter(prefix=prefix).first()
        if key is None:
            raise CommandError(f"unknown trader API key {KEY_PREFIX}{prefix}_…")
        if key.revoked_at is not None:
            self.stdout.write(f"{masked(key)} was already revoked {key.revoked_at:%Y-%m-%d %H:%M}Z")
            return
        trader_key_revoke(key=key)
        self.stdout.write(
            self.style.SUCCESS(
                f"Revoked {masked(key)} of {key.user}; every process refuses it within "
                f"{settings.API_KEY_CACHE_SECONDS:g} s"
            )
        )
