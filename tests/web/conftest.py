"""Fixtures of the trader web UI tests: markets and books on the real price bus (the engine
tests' builders), a signed-in browser-like client, and the `browser` marker's policy.

Tests marked `browser` drive Debian's Chromium through Playwright. Without Chromium (or the
playwright package) they skip with the reason; with REQUIRE_BROWSER=1 (CI) they fail instead,
so a missing browser can never turn into a silently green run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.cache import cache

from marketdata.bus import reset_bus
from tests.trading.conftest import feed_alive
from trading.depletion import reset_depletion
from web.markets.views import _watched_at

REQUIRE_BROWSER = os.environ.get("REQUIRE_BROWSER") == "1"
CHROMIUM_PATH = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARTIFACTS_DIR = Path(__file__).resolve().parent.parent.parent / "artifacts"


def browser_missing() -> str | None:
    """Why browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "needs the playwright package"
    if not (Path(CHROMIUM_PATH).is_file() or shutil.which(CHROMIUM_PATH)):
        return f"needs Chromium at {CHROMIUM_PATH} (apt-get install chromium)"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("browser"):
        reason = browser_missing()
        if reason is not None:
            if REQUIRE_BROWSER:
                pytest.fail(f"{reason} (REQUIRE_BROWSER=1)")
            pytest.skip(reason)


@pytest.fixture(autouse=True)
def _fresh_bus(_fresh_process_state: None) -> Iterator[None]:
    """Fresh bus clients on the emptied test Redis, every shard's feed beating (the tests'
    feed is alive), and no cached categories or price histories from another test."""
    cache.clear()
    _watched_at.clear()
    reset_bus()
    reset_depletion()
    feed_alive()
    yield
    reset_bus()
    reset_depletion()
