"""`manage.py marketdata discover|stream`: market data operations.

    discover  upsert events/markets/tokens from Gamma (+ CLOB gaps) once, now
    stream    run one websocket ingester shard (marketdata.ingest.run_stream)

The fake Polymarket is `manage.py fakepoly` (devtools). Refusals and upstream failures are
CommandErrors (non-zero exit) with the reason.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from marketdata.clients import ClobClient, GammaClient, PolymarketError
from marketdata.services import discover


def _int_at_least(text: str, minimum: int, maximum: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise argparse.ArgumentTypeError(f"{text!r} must be {bound}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def port_number(text: str) -> int:
    return _int_at_least(text, 0, 65535)


def parse_shard(value: str, shards: int | None) -> tuple[int, int]:
    """`--shard i/N` (or a bare i with `--shards N`) → (i, N), with 0 ≤ i < N."""
    text = str(value).strip()
    try:
        if "/" in text:
            left, right = text.split("/", 1)
            shard, count = int(left), int(right)
        else:
            shard, count = int(text), shards or 1
    except ValueError:
        raise CommandError(f"--shard takes i/N, e.g. 0/4, not {value!r}") from None
    if count < 1 or not 0 <= shard < count:
        raise CommandError(f"--shard must satisfy 0 <= i < N (got {shard}/{count})")
    return shard, count


class Command(BaseCommand):
    help = "Market data: discover markets, run a feed shard."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True, metavar="{discover,stream}")

        disc = sub.add_parser("discover", help="Discover markets from Gamma now.")
        disc.add_argument("--limit", type=positive_int, default=500, help="Max markets (500)")
        disc.add_argument(
            "--include-closed", action="store_true", help="Also closed markets (after open ones)"
        )
        disc.add_argument("--gamma-url", default=None, help="Default: POLYMARKET_GAMMA_URL")
        disc.add_argument("--clob-url", default=None, help="Default: POLYMARKET_CLOB_URL")

        stream = sub.add_parser("stream", help="Run one websocket ingester shard.")
        stream.add_argument(
            "--shard",
            default="0/1",
            help="i/N: this process streams the tokens with shard_of(token, N) == i "
            "(default 0/1: everything)",
        )
        stream.add_argument(
            "--shards", type=positive_int, default=None, help="N, when --shard is a bare i"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        subcommand = options["subcommand"]
        if subcommand == "discover":
            self._discover(options)
        elif subcommand == "stream":
            self._stream(options)
        else:  # pragma: no cover - argparse refuses unknown subcommands
            raise CommandError(f"unknown subcommand {subcommand!r}")

    # --- discover ---------------------------------------------------------------------------------
    def _discover(self, options: dict[str, Any]) -> None:
        gamma_url = options["gamma_url"] or settings.POLYMARKET_GAMMA_URL
        clob_url = options["clob_url"] or settings.POLYMARKET_CLOB_URL
        try:
            with GammaClient(gamma_url) as gamma, ClobClient(clob_url) as clob:
                result = discover(
                    gamma=gamma,
                    clob=clob,
                    limit=options["limit"],
                    include_closed=options["include_closed"],
                )
        except PolymarketError as exc:
            raise CommandError(f"Gamma at {gamma_url} failed: {exc}") from exc
        self.stdout.write(
            self.style.SUCCESS(
                f"Discovered {result.markets_seen} markets from {gamma_url}: "
                f"{result.markets_created} new, {result.markets_updated} updated; "
                f"{result.events_created} new events, {result.tokens_created} new tokens; "
                f"{result.filled_from_clob} filled from the CLOB; "
                f"{result.status_changes} status changes, {result.resolutions} resolutions"
            )
        )
        for error in result.errors:
            self.stderr.write(f"  skipped {error}")

    # --- stream -----------------------------------------------------------------------------------
    def _stream(self, options: dict[str, Any]) -> None:
        shard, shards = parse_shard(options["shard"], options["shards"])
        from marketdata.ingest import run_stream

        run_stream(shard=shard, shards=shards)
