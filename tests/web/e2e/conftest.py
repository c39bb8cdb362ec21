"""Browser fixtures: `app_server` (the app on loopback), `feed` (fake Polymarket + the real
ingester), `browser` (headless Debian Chromium), `page` (anonymous) and `trader_page` (signed
in, with a funded personal account), and `shot` (full-page screenshot into artifacts/).

Every test here is marked `browser` (skips without Chromium, fails under REQUIRE_BROWSER=1)
and uses a transactional database: the server thread must see what the test commits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.web.conftest import ARTIFACTS_DIR, CHROMIUM_PATH
from tests.web.e2e.harness import AppServer, Feed, chromium, session_cookie_for, start_feed

DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


@pytest.fixture
def _async_unsafe(monkeypatch: pytest.MonkeyPatch) -> None:
    # Playwright's sync API keeps an event loop running in this thread; the ORM calls the
    # test makes between browser steps are still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")


@pytest.fixture
def e2e_db(transactional_db: None) -> None:
    """A committed (transactional) database the server thread can see."""


@pytest.fixture
def app_server(e2e_db: None, _async_unsafe: None) -> Iterator[AppServer]:
    server = AppServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def feed(e2e_db: None) -> Iterator[Feed]:
    running = start_feed()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def browser(_async_unsafe: None) -> Iterator[Any]:
    from playwright.sync_api import expect

    # Generous waits: CI machines are small and shared (2 cores); a wait only costs time
    # when something is actually wrong.
    expect.set_options(timeout=15_000)
    with chromium(CHROMIUM_PATH) as running:
        yield running


@pytest.fixture
def page(browser: Any, app_server: AppServer) -> Iterator[Any]:
    context = browser.new_context(viewport=DESKTOP, base_url=app_server.url)
    context.set_default_timeout(15_000)
    tab = context.new_page()
    try:
        yield tab
    finally:
        context.close()


@dataclass
class Trader:
    user: Any
    account: Any


@pytest.fixture
def trader(e2e_db: None) -> Trader:
    from tests.factories import UserFactory, personal_account

    user = UserFactory(email="e2e-trader@example.com")
    return Trader(user=user, account=personal_account(user, "1000"))


@pytest.fixture
def trader_page(browser: Any, app_server: AppServer, trader: Trader) -> Iterator[Any]:
    """A page signed in as `trader` (session cookie set as after a login)."""
    context = browser.new_context(viewport=DESKTOP, base_url=app_server.url)
    context.set_default_timeout(15_000)
    context.add_cookies([session_cookie_for(trader.user, app_server.url)])
    tab = context.new_page()
    try:
        yield tab
    finally:
        context.close()


@pytest.fixture
def shot() -> Callable[[Any, str], Path]:
    """Save a full-page screenshot as artifacts/<name>.png (git-ignored) and return its path."""
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)

    def take(page: Any, name: str) -> Path:
        path = ARTIFACTS_DIR / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
