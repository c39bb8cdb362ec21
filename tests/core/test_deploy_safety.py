"""Deployment-shaped behaviour, exercised in real subprocesses with real configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_django(code: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SECRET_KEY", "DEBUG")}
    base.update(DJANGO_SETTINGS_MODULE="config.settings", **env)
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()\n" + code],
        cwd=ROOT, env=base, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_deployment_without_secret_key_refuses_to_start():
    refused = run_django("", DATABASE_URL="postgres://app@127.0.0.1:1/polysim", DEBUG="0")
    assert refused.returncode != 0
    assert "SECRET_KEY is required when DEBUG=0" in refused.stderr
    configured = run_django(
        "", DATABASE_URL="postgres://app@127.0.0.1:1/polysim", DEBUG="0", SECRET_KEY="s" * 50
    )
    assert configured.returncode == 0, configured.stderr


def test_embedded_mode_needs_no_secret():
    assert run_django("").returncode == 0


def test_database_down_is_503_service_unavailable_not_500():
    # A PostgreSQL URL where nothing listens: the key lookup cannot reach the database.
    probe = run_django(
        "from django.test import Client\n"
        "import json\n"
        "r = Client().get('/v1/partner/whoami', HTTP_X_API_KEY='pk_abcdefgh_' + 'x' * 43)\n"
        "print(json.dumps({'status': r.status_code, 'body': r.json(),"
        " 'code': r.headers.get('X-Error-Code')}))",
        DATABASE_URL="postgres://app@127.0.0.1:1/polysim",
        DB_CONNECT_TIMEOUT="2",
        SECRET_KEY="s" * 50,
    )
    assert probe.returncode == 0, probe.stderr
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert result["status"] == 503
    assert result["body"]["error"] == "SERVICE_UNAVAILABLE" == result["code"]
    assert "Traceback" not in json.dumps(result["body"])
