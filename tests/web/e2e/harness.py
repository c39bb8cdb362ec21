"""The browser harness, reusable outside pytest (bench/web_ui.py uses it too): the app served
on loopback by a real threaded WSGI server, a fake Polymarket plus the real websocket ingester
feeding the price bus the app reads, and headless Debian Chromium through Playwright.

Everything listens on 127.0.0.1 only, on ports taken from PORTS (the range this project's
browser tests may use).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.staticfiles.handlers import StaticFilesHandler
from django.test.testcases import LiveServerThread

HOST = "127.0.0.1"
PORTS = range(18300, 18400)


def free_port(avoid: set[int] | None = None) -> int:
    """The first port of PORTS nobody listens on (checked by binding it)."""
    for port in PORTS:
        if avoid and port in avoid:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


class AppServer:
    """The Django app on a threaded WSGI server (Django's own LiveServerThread, static files
    served from the apps as in the demo), each request on its own database connection."""

    def __init__(self) -> None:
        self.port = free_port()
        self.thread = LiveServerThread(HOST, StaticFilesHandler, port=self.port)
        self.thread.daemon = True

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> AppServer:
        self.thread.start()
        self.thread.is_ready.wait(30)
        if self.thread.error:
            raise self.thread.error
        return self

    def stop(self) -> None:
        self.thread.terminate()
        # Requests still in flight (a poll the browser sent as it closed) finish first: their
        # open transactions would hold locks the test's database flush waits for.
        deadline = time.monotonic() + 5
        for thread in threading.enumerate():
            if "process_request_thread" in thread.name:
                thread.join(max(0.0, deadline - time.monotonic()))


@dataclass
class Feed:
    """A fake Polymarket (the synthetic demo dataset) and the real ingester streaming it into
    the process's price bus; `token_ids` are the tokens the ingester follows."""

    fake: Any
    token_ids: list[str]
    ingester: Any = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _saved: dict[str, str] = field(default_factory=dict)

    def change_book(self, token_id: str, change: Callable[[Any], None]) -> dict[str, Any]:
        """Change a token's book on the fake exchange as a real `book` event would (full
        snapshot, correct hash), send it to the subscribers, and return the message."""
        from devtools.fakepoly import now_ms

        current = self.fake.books[token_id]
        book = dataclasses.replace(current, bids=dict(current.bids), asks=dict(current.asks))
        change(book)
        book.timestamp = now_ms()
        message = book.ws()
        self.fake.replay([json.dumps([message])])  # an array frame, as the exchange sends
        return message

    def trade(self, token_id: str, *, price: str, size: str, side: str) -> dict[str, Any]:
        """A market-wide print on the fake exchange (`last_trade_price`), as sent after a
        trade."""
        from devtools.fakepoly import now_ms

        message = {
            "event_type": "last_trade_price",
            "asset_id": token_id,
            "market": self.fake.books[token_id].market,
            "price": price,
            "side": side,
            "size": size,
            "fee_rate_bps": "0",
            "timestamp": now_ms(),
        }
        self.fake.replay([message])
        return message

    def stop(self) -> None:
        if self._loop is not None and self.ingester is not None:
            self._loop.call_soon_threadsafe(self.ingester.stop)
        if self._thread is not None:
            self._thread.join(10)
        self.fake.stop()
        for name, value in self._saved.items():
            setattr(settings, name, value)


def start_feed(*, discover_markets: bool = True, wait_s: float = 20.0) -> Feed:
    """The demo's market-data wiring (devtools.management.commands.demo.MarketDataComponent) on
    the synthetic dataset: fake Polymarket, one discovery pass, one ingester for every open
    token. Returns once every followed token has a fresh top on the bus (or raises)."""
    from devtools.fakepoly import DEMO_DATA_DIR, FakePolymarket
    from marketdata.bus import get_bus
    from marketdata.clients import ClobClient, GammaClient
    from marketdata.ingest import IngestConfig, Ingester, wanted_tokens
    from marketdata.services import discover

    fake = FakePolymarket(DEMO_DATA_DIR, port=free_port()).start_in_thread()
    saved = {
        name: getattr(settings, name)
        for name in ("POLYMARKET_GAMMA_URL", "POLYMARKET_CLOB_URL", "POLYMARKET_WS_URL")
    }
    settings.POLYMARKET_GAMMA_URL = fake.gamma_url
    settings.POLYMARKET_CLOB_URL = fake.clob_url
    settings.POLYMARKET_WS_URL = fake.ws_url
    feed = Feed(fake=fake, token_ids=[], _saved=saved)
    try:
        if discover_markets:
            with GammaClient() as gamma, ClobClient() as clob:
                discover(gamma=gamma, clob=clob, limit=200, include_closed=True)
        # Computed here, in the test thread: the ingester thread needs no database.
        infos = wanted_tokens(shard=0, shards=1)
        feed.token_ids = sorted(infos)
        bus = get_bus()
        config = IngestConfig(ws_url=fake.ws_url, health_seconds=3600.0)
        ready = threading.Event()

        def run() -> None:
            feed._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(feed._loop)
            clob = ClobClient()
            feed.ingester = Ingester(config=config, clob=clob, bus=bus, token_source=lambda: infos)
            ready.set()
            try:
                feed._loop.run_until_complete(feed.ingester.run())
            finally:
                clob.close()
                feed._loop.close()

        feed._thread = threading.Thread(target=run, name="e2e-feed", daemon=True)
        feed._thread.start()
        ready.wait(10)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            tops = bus.latest_many(feed.token_ids)
            if len(tops) == len(feed.token_ids) and all(t.fresh for t in tops.values()):
                return feed
            time.sleep(0.1)
        raise RuntimeError(
            f"the feed did not deliver every book in {wait_s} s "
            f"({len(bus.latest_many(feed.token_ids))}/{len(feed.token_ids)})"
        )
    except BaseException:
        feed.stop()
        raise


@contextlib.contextmanager
def chromium(executable_path: str) -> Iterator[Any]:
    """Headless Debian Chromium through Playwright's sync API."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=executable_path,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            yield browser
        finally:
            browser.close()


def session_cookie_for(user: Any, base_url: str) -> dict[str, Any]:
    """A signed-in session for `user`, as the cookie a browser would hold after signing in
    (the same session machinery as the login link; no password involved)."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    return {
        "name": settings.SESSION_COOKIE_NAME,
        "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
        "url": base_url,
        "httpOnly": True,
        "sameSite": "Lax",
    }
