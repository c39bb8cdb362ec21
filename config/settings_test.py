"""Settings for the test suite: production settings plus a test-only SECRET_KEY, so tests can
run against PostgreSQL (DATABASE_URL set, hence not embedded) without a real secret."""

import os

os.environ.setdefault("SECRET_KEY", "polysim-test-suite-only-key-not-for-any-deployment")

from config.settings import *  # noqa: F403
