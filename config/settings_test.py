"""Settings for the test suite: production settings on the same servers (embedded or the URLs),
with a test-only SECRET_KEY and a Redis database of its own.

The suite flushes its Redis database between tests, so it must never be the one a developer's
demo (or anything else) keeps data in: tests use database TEST_REDIS_DB (default 15) of the
configured Redis. pytest-django creates its own `test_<name>` PostgreSQL database likewise.
Celery tasks run eagerly by default; a test opts in to a real worker
(tests/accounts/test_worker.py).
"""

import os

os.environ.setdefault("SECRET_KEY", "polysim-test-suite-only-key-not-for-any-deployment")

from config.settings import *  # noqa: F403
from config.settings import REDIS_URL, celery_broker_url_for, redis_url_with_db

TEST_REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "15"))
REDIS_URL = redis_url_with_db(REDIS_URL, TEST_REDIS_DB)
CELERY_BROKER_URL = celery_broker_url_for(REDIS_URL)
CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True  # a failing task fails the test that ran it
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
# Passwords (the admin's) are hashed with the cheapest hasher: the suite signs in often and
# tests nothing about the hash's cost.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
