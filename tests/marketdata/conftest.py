"""The market-data tests use the recorded fixtures and the fake Polymarket of tests/devtools."""

from tests.devtools.conftest import fake, fixtures_dir

__all__ = ["fake", "fixtures_dir"]
