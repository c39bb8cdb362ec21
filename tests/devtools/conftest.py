"""Fixtures shared by the tests of the fake Polymarket and of market data: the recorded
Polymarket fixtures and a fake Polymarket (real HTTP + websocket on loopback) serving them."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.fakepoly import FakePolymarket


@pytest.fixture
def fixtures_dir(shared_dir) -> Path:
    """shared/fixtures/polymarket (skips, or fails under REQUIRE_FIXTURES=1, when absent)."""
    return shared_dir / "fixtures" / "polymarket"


@pytest.fixture
def fake(fixtures_dir):
    """A FakePolymarket serving the recorded fixtures, stopped after the test."""
    server = FakePolymarket(fixtures_dir).start_in_thread()
    try:
        yield server
    finally:
        server.stop()
