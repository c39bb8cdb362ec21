"""Suite-wide fixtures and the service policy.

Tests marked `postgres` need the configured database to be PostgreSQL (row locks, real
concurrency); tests marked `redis` need a reachable Redis. Without them they skip with the
reason; with REQUIRE_SERVICES=1 (CI) they fail instead, so a missing service can never turn
into a silently green run. Fixture files under ../shared behave the same with
REQUIRE_FIXTURES=1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection

from tests.factories import make_partner_client

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
REQUIRE_FIXTURES = os.environ.get("REQUIRE_FIXTURES") == "1"
SHARED_DIR = Path(__file__).resolve().parent.parent.parent / "shared"
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL") or os.environ.get("REDIS_URL") or ""


def _missing(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (REQUIRE_SERVICES=1)")
    pytest.skip(reason)


def _redis_reachable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("postgres") and connection.vendor != "postgresql":
        _missing(
            "needs PostgreSQL (real row locks and concurrency): "
            "set DATABASE_URL=postgres://postgres@127.0.0.1:5432/polysim"
        )
    if item.get_closest_marker("redis"):
        if not TEST_REDIS_URL:
            _missing("needs Redis: set REDIS_URL=redis://127.0.0.1:6379/0")
        elif not _redis_reachable(TEST_REDIS_URL):
            _missing(f"needs Redis: {TEST_REDIS_URL} is not reachable")


@pytest.fixture
def redis_url() -> str:
    """A Redis URL for tests marked `redis` (flushed before the test)."""
    import redis

    redis.Redis.from_url(TEST_REDIS_URL).flushdb()
    return TEST_REDIS_URL


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        reason = f"needs the shared fixtures at {SHARED_DIR}"
        if REQUIRE_FIXTURES:
            pytest.fail(f"{reason} (REQUIRE_FIXTURES=1)")
        pytest.skip(reason)
    return SHARED_DIR


@pytest.fixture(autouse=True)
def _fresh_process_state(settings) -> Iterator[None]:
    """Caches that live for a process must not leak between tests."""
    from accounts.services import trader_keys
    from partners import keys
    from partners.ratelimit import rate_limit_reset_local

    keys.key_cache.clear()
    trader_keys.key_cache.clear()
    rate_limit_reset_local()
    settings.REDIS_URL = ""  # tests that want Redis opt in with the `redis_url` fixture
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.CELERY_TASK_ALWAYS_EAGER = True
    # The Celery app read its configuration once, at import: with REDIS_URL in the
    # environment (CI's second pass) it would publish to a broker no worker reads. Tasks run
    # eagerly in every test unless one opts in to a real worker (tests/accounts/test_worker.py).
    from config.celery import app as celery_app

    was_eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = was_eager
    keys.key_cache.clear()
    trader_keys.key_cache.clear()


@pytest.fixture
def tenant(db):
    from tests.factories import TenantFactory

    return TenantFactory(slug="acme", name="Acme Prop")


@pytest.fixture
def other_tenant(db):
    from tests.factories import TenantFactory

    return TenantFactory(slug="rival", name="Rival Prop")


@pytest.fixture
def partner(tenant):
    """An API client authenticated with a full-scope key of `tenant`."""
    return make_partner_client(tenant)


@pytest.fixture
def other_partner(other_tenant):
    return make_partner_client(other_tenant)
