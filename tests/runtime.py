"""The suite's servers as a test sees them: its Redis database, and the environment that runs
our own commands as child processes on the same PostgreSQL and Redis databases."""

from __future__ import annotations

import redis
from django.conf import settings

from core.supervisor import child_env as child_env  # the one recipe, re-exported for tests


def redis_flush() -> None:
    """Empty the suite's Redis database (its own number, never the demo's: tests/conftest.py),
    for state that must not outlive one example of a property-based test."""
    redis.Redis.from_url(str(settings.REDIS_URL)).flushdb()
