"""No secret in any log line (issue #13 item 5): one-time login-link tokens and API keys are
redacted in gunicorn's access and error logs and in the app's own log records."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.core import mail

from core.redact import REDACTED, RedactSecrets, redact
from tests.factories import TenantFactory, make_partner_client
from tests.runtime import child_env

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("GET /login/t/AbC-12_x HTTP/1.1", "GET /login/t/[redacted] HTTP/1.1"),
        ("GET /login/t/AbC?next=/p", "GET /login/t/[redacted]?next=/p"),
        ("GET /v1/x?api_key=pk_abcd1234_s3cr-et_", "GET /v1/x?api_key=[redacted]"),
        ("GET /v1/x?a=1&token=zz&b=2", "GET /v1/x?a=1&token=[redacted]&b=2"),
        ("Bearer tk_abcd1234_s3cret-_x", "Bearer tk_abcd1234_[redacted]"),
        ("GET /v1/markets?q=will_it&limit=5", "GET /v1/markets?q=will_it&limit=5"),
    ],
)
def test_redact(line, expected):
    assert redact(line) == expected


def test_the_log_filter_redacts_formatted_records():
    record = logging.LogRecord("django.request", logging.WARNING, __file__, 1,
                               "Not Found: %s", ("/login/t/SeCrEt",), None)  # fmt: skip
    assert RedactSecrets().filter(record) is True
    assert record.getMessage() == f"Not Found: /login/t/{REDACTED}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.django_db(transaction=True)
def test_a_real_server_logs_no_login_token_and_no_api_key(tmp_path):
    """gunicorn with the deployed configuration (deploy/gunicorn.conf.py): a login link
    opened twice and a partner key sent in the query string leave no secret in its output."""
    partner = make_partner_client(TenantFactory(slug="acme"))
    user = partner.post(
        "/v1/partner/users", {"external_id": "log-1", "email": "log@example.com"}, format="json"
    ).json()
    link = partner.post(f"/v1/partner/users/{user['user_id']}/login-link", {}, format="json")
    assert link.status_code == 202, link.content
    found = re.search(r"/login/t/([A-Za-z0-9_-]+)", mail.outbox[-1].body)  # the email sent
    assert found is not None, mail.outbox[-1].body
    token = found.group(1)
    secret = partner.raw_key.rsplit("_", 1)[1]
    port = _free_port()
    env = {**child_env(), "GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": "1"}
    out, err = (tmp_path / "stdout.log").open("w"), (tmp_path / "stderr.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py",
         "config.wsgi:application"],
        cwd=ROOT, env=env, stdout=out, stderr=err,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{base}/v1/partner/whoami", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.1)
        path = "/login/t/" + token
        assert httpx.get(base + path, timeout=5).status_code < 500
        assert httpx.get(base + path, timeout=5).status_code < 500  # a used link, logged too
        refused = httpx.get(f"{base}/v1/partner/whoami?api_key={partner.raw_key}", timeout=5)
        assert refused.status_code == 401
        assert httpx.get(f"{base}/v1/partner/whoami", headers={"X-API-Key": partner.raw_key},
                         timeout=5).status_code == 200  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=20)
        out.close()
        err.close()
    logs = (tmp_path / "stdout.log").read_text() + (tmp_path / "stderr.log").read_text()
    assert logs.count(f"/login/t/{REDACTED}") >= 2, logs[-2000:]  # the lines are there
    assert f"api_key={REDACTED}" in logs, logs[-2000:]
    assert token not in logs
    assert secret not in logs
