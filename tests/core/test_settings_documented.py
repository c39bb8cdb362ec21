"""Every environment variable config/settings.py reads is documented in deploy/.env.example."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_env_example_documents_every_setting():
    settings_src = (ROOT / "config" / "settings.py").read_text()
    read = set(re.findall(r'env(?:\.\w+)?\(\s*"([A-Z_][A-Z0-9_]*)"', settings_src))
    read |= set(re.findall(r'env\.db_url\(\s*"([A-Z_]+)"', settings_src))
    documented = set(
        re.findall(r"^([A-Z_][A-Z0-9_]*)=", (ROOT / "deploy" / ".env.example").read_text(), re.M)
    )
    assert len(read) > 20
    assert read - documented == set(), "undocumented settings"
    assert documented - read == set(), "documented settings the code does not read"
