"""Development and test tooling, outside the production apps' import graph: the one-command
demo (`manage.py demo`) and the fake Polymarket (`manage.py fakepoly`, devtools.fakepoly) that
the demo, the tests and the benches run offline. It may import any app; no production app
imports it (an import-linter contract in pyproject.toml keeps that)."""
