"""`manage.py fakepoly`: serve the fake Polymarket (Gamma, CLOB REST, market websocket) on
loopback until interrupted; point the POLYMARKET_* URLs at it to run offline. Refusals are
CommandErrors (non-zero exit) with the reason."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from devtools.fakepoly import DEMO_DATA_DIR, FakePolymarket
from marketdata.management.commands.marketdata import port_number


class Command(BaseCommand):
    help = "Serve a fake Polymarket (HTTP + websocket) on loopback."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=port_number, default=8765, help="0 = any free port")
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument(
            "--fixtures",
            type=Path,
            default=DEMO_DATA_DIR,
            help="Fixtures directory (default: the SYNTHETIC demo dataset); e.g. "
            "../shared/fixtures/polymarket for recorded data",
        )
        parser.add_argument(
            "--walk", action="store_true", help="Add a labelled SYNTHETIC random price walk"
        )
        parser.add_argument("--walk-interval", type=float, default=1.0, help="Seconds per step")
        parser.add_argument("--seed", type=int, default=None, help="Seed of the walk")
        parser.add_argument(
            "--replay",
            type=Path,
            default=None,
            help="A recorded .jsonl market-channel sequence to replay in a loop",
        )
        parser.add_argument("--replay-interval", type=float, default=0.5)

    def handle(self, *args: Any, **options: Any) -> None:
        fixtures: Path = options["fixtures"]
        if not fixtures.is_dir():
            raise CommandError(f"fixtures directory not found: {fixtures}")
        replay: Path | None = options["replay"]
        if replay is not None and not replay.is_file():
            raise CommandError(f"replay file not found: {replay}")
        fake = FakePolymarket(
            fixtures,
            host=options["host"],
            port=options["port"],
            walk=options["walk"],
            walk_interval=options["walk_interval"],
            seed=options["seed"],
        )
        try:
            asyncio.run(self._serve(fake, replay, options["replay_interval"]))
        except KeyboardInterrupt:
            pass
        except OSError as exc:
            raise CommandError(
                f"cannot listen on {options['host']}:{options['port']}: {exc}"
            ) from exc

    async def _serve(self, fake: FakePolymarket, replay: Path | None, interval: float) -> None:
        await fake.start()
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stopped.set)
        meta = fake.meta()
        label = meta["dataset"].get("label", "")
        self.stdout.write(self.style.SUCCESS(f"Fake Polymarket on {fake.base_url}"))
        self.stdout.write(f"  fixtures: {fake.fixtures.path} ({label})")
        self.stdout.write(
            f"  {meta['gamma_markets']} Gamma markets, {meta['clob_markets']} CLOB markets, "
            f"{meta['books']} books"
        )
        if fake.walk:
            self.stdout.write(
                self.style.WARNING(
                    f"  SYNTHETIC price walk every {fake.walk_interval}s (not real prices)"
                )
            )
        self.stdout.write("  Point polysim at it:")
        self.stdout.write(f"    POLYMARKET_GAMMA_URL={fake.gamma_url}")
        self.stdout.write(f"    POLYMARKET_CLOB_URL={fake.clob_url}")
        self.stdout.write(f"    POLYMARKET_WS_URL={fake.ws_url}")
        self.stdout.write("  Ctrl-C to stop.")
        replayer = None
        if replay is not None:
            lines = [ln for ln in replay.read_text().splitlines() if ln.strip()]
            self.stdout.write(f"  replaying {len(lines)} recorded messages from {replay} in a loop")
            replayer = asyncio.create_task(self._replay_forever(fake, lines, interval))
        try:
            await stopped.wait()
        finally:
            if replayer is not None:
                replayer.cancel()
            await fake.astop()

    @staticmethod
    async def _replay_forever(fake: FakePolymarket, lines: list[str], interval: float) -> None:
        while True:
            await fake.areplay(lines, interval)
            await asyncio.sleep(max(interval, 0.1))
