"""The suite's servers as a test sees them: its Redis database, and the environment that runs
our own commands as child processes on the same PostgreSQL and Redis databases."""

from __future__ import annotations

import os

import redis
from django.conf import settings
from django.db import connection

from core.db import database_url


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child `manage.py`/`celery`/`gunicorn` on the test's PostgreSQL
    database and Redis database (production settings; Celery's broker follows REDIS_URL)."""
    env = {k: v for k, v in os.environ.items() if k != "CELERY_BROKER_URL"}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=database_url(connection.settings_dict),
        REDIS_URL=str(settings.REDIS_URL),
        SECRET_KEY=str(settings.SECRET_KEY),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def redis_flush() -> None:
    """Empty the suite's Redis database (its own number, never the demo's: tests/conftest.py),
    for state that must not outlive one example of a property-based test."""
    redis.Redis.from_url(str(settings.REDIS_URL)).flushdb()
