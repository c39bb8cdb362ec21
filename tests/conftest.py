"""Suite-wide fixtures.

Every test has PostgreSQL and Redis: the embedded servers under var/ (config/embedded.py), or
the ones DATABASE_URL / REDIS_URL name. Nothing skips for a service. pytest-django creates
its own `test_*` database; Redis is the configured server's database TEST_REDIS_DB (default
15, config/settings_test.py), flushed before every test, never the one the demo keeps data in.
Fixture files under ../shared skip when absent, or fail with REQUIRE_FIXTURES=1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings as django_settings

from config.embedded import RedisServer
from tests.factories import make_partner_client
from tests.runtime import redis_flush

REQUIRE_FIXTURES = os.environ.get("REQUIRE_FIXTURES") == "1"
SHARED_DIR = Path(__file__).resolve().parent.parent.parent / "shared"


def pytest_configure(config: pytest.Config) -> None:
    # The suite flushes its Redis database before every test: refuse to start on database 0,
    # where a developer's demo (or a deployment) keeps its data.
    db = redis.Redis.from_url(django_settings.REDIS_URL).connection_pool.connection_kwargs
    if int(db.get("db", 0) or 0) == 0:
        raise pytest.UsageError(
            f"the test Redis must not be database 0: {django_settings.REDIS_URL}"
        )


@pytest.fixture
def redis_url() -> str:
    """The suite's Redis (settings.REDIS_URL: its own database, flushed before each test)."""
    return str(django_settings.REDIS_URL)


@pytest.fixture
def private_redis(tmp_path_factory) -> Iterator[RedisServer]:
    """A redis-server of the test's own (config/embedded.py), which it may stop and start
    again: empty, or from a dump it saved."""
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    try:
        yield server
    finally:
        server.kill()


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
    """Nothing a test leaves behind in a process cache or in Redis reaches the next one."""
    from accounts.services import trader_keys
    from core.api.ratelimit import rate_limit_breaker_reset
    from partners import keys

    keys.key_cache.clear()
    trader_keys.key_cache.clear()
    rate_limit_breaker_reset()
    redis_flush()
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.CELERY_TASK_ALWAYS_EAGER = True
    # The Celery app read its configuration once: a test that opted in to a real worker
    # (tests/accounts/test_worker.py) turns eager execution off on the app itself.
    from config.celery import app as celery_app

    celery_app.conf.task_always_eager = True
    yield
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
