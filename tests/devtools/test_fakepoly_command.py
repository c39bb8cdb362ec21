"""`manage.py fakepoly`: the fake Polymarket as a command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

ROOT = Path(__file__).resolve().parents[2]


def test_fakepoly_refuses_a_missing_fixtures_directory(tmp_path):
    with pytest.raises(CommandError, match="not found"):
        call_command("fakepoly", "--port", "0", "--fixtures", str(tmp_path / "missing"))


def test_fakepoly_command_serves_until_interrupted():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings_test", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "fakepoly", "--port", "0", "--walk"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        base = None
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if match := re.search(r"Fake Polymarket on (http://127\.0\.0\.1:\d+)", line):
                base = match.group(1)
            if "Ctrl-C" in line:
                break
        assert base, "".join(lines)
        meta = httpx.get(f"{base}/fakepoly/meta", timeout=5).json()
        assert meta["synthetic_walk"] is True and meta["dataset"]["synthetic"] is True
        assert any("SYNTHETIC price walk" in line for line in lines)
        assert any(f"POLYMARKET_WS_URL=ws://{base[7:]}/ws/market" in line for line in lines)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0
