"""`manage.py trading match [--shard i/N]`: the maker matcher (docs/engine-rules.md §4,
docs/operations.md "Matcher"). Long-running; stops cleanly on SIGTERM/SIGINT after the
entry in hand (its fills committed and acknowledged)."""

from __future__ import annotations

import signal
import threading
import time
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

import orjson
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from marketdata.bus import get_bus
from trading.matcher import Matcher, default_consumer, parse_shard
from trading.orderevents import get_order_events


class Command(BaseCommand):
    help = "Trading engine processes. `match`: fill resting orders from the price bus."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        match = sub.add_parser("match", help="Run the maker matcher until stopped.")
        match.add_argument(
            "--shard",
            help="i/N: the price-bus shard to match (N must equal PRICE_BUS_SHARDS); "
            "default every shard.",
        )
        match.add_argument("--consumer", help="Consumer name in the group (default per shard).")
        match.add_argument(
            "--stats-file",
            help="Write the matcher's counters and fill latencies (JSON) here every second "
            "and at exit (benchmarks, diagnostics).",
        )
        match.add_argument("--block-ms", type=int, default=200, help=argparse_help_block())

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] != "match":
            raise CommandError(f"unknown action {options['action']!r}")
        n_config = int(getattr(settings, "PRICE_BUS_SHARDS", 1) or 1)
        try:
            shards, n = parse_shard(options.get("shard"), n_config)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if n != n_config:
            raise CommandError(f"--shard {options['shard']}: PRICE_BUS_SHARDS is {n_config}")
        matcher = Matcher(
            bus=get_bus(),
            events=get_order_events(),
            shards=shards,
            consumer=options.get("consumer") or default_consumer(shards),
        )
        stop = threading.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda signum, frame: stop.set())
        stats_path = Path(options["stats_file"]) if options.get("stats_file") else None
        # Waits (logging what for) while PostgreSQL or Redis is down at start, rather than
        # exiting: the process heals by itself (docs/operations.md).
        if not matcher.wait_started(stop):
            return
        if stats_path is not None:
            _write_stats(matcher, stats_path)
            threading.Thread(
                target=_write_stats_loop, args=(matcher, stats_path, stop), daemon=True
            ).start()
        self.stdout.write(
            f"matcher {matcher.consumer}: shards {shards} of {n}, "
            f"{len(matcher.index)} resting orders loaded in {matcher.stats.load_seconds:.2f}s"
        )
        self.stdout.flush()
        try:
            matcher.run(stop, block_ms=options["block_ms"])
        finally:
            if stats_path is not None:
                _write_stats(matcher, stats_path)
        s = matcher.stats
        self.stdout.write(f"matcher stopped: {s.entries} entries, {s.fills} fills")


def argparse_help_block() -> str:
    return "Longest wait for a bus entry before checking order events and reconciling."


def _write_stats(matcher: Matcher, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(orjson.dumps({**matcher.stats.as_dict(), "written_at": time.time()}))
    tmp.replace(path)


def _write_stats_loop(matcher: Matcher, path: Path, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        _write_stats(matcher, path)
