"""`manage.py ledger audit [--account ID]`: check the ledger invariants (docs/engine-rules.md §5)
and exit non-zero naming each violation."""

from __future__ import annotations

import uuid
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from trading.audit import ledger_audit


class Command(BaseCommand):
    help = "Ledger tools. `audit`: check cash, reservations, positions and fill sequences."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        audit = sub.add_parser("audit", help="Check the invariants; non-zero exit on violation.")
        audit.add_argument("--account", help="Only this account id (UUID).")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] != "audit":
            raise CommandError(f"unknown action {options['action']!r}")
        account = options.get("account")
        if account is not None:
            try:
                account = uuid.UUID(account)
            except ValueError as exc:
                raise CommandError(f"--account: not a UUID: {account!r}") from exc
        violations = ledger_audit(account_id=account)
        for v in violations:
            self.stderr.write(f"VIOLATION {v}")
        if violations:
            raise CommandError(f"ledger audit: {len(violations)} violation(s)", returncode=1)
        self.stdout.write("ledger audit: OK")
