"""`manage.py demo`: an idempotent seed, a banner whose key, link and curl line work, and a
web server that serves the admin's static files even with DEBUG=0."""

from __future__ import annotations

import re
import socket
import time
from decimal import Decimal
from io import StringIO

import httpx
import pytest
from django.core.management import CommandError, call_command

from accounts.models import Account, EmailOutbox, LedgerEntry, User
from core.supervisor import group_alive
from devtools.management.commands import demo
from devtools.management.commands.demo import TRADER_EMAIL
from partners import keys
from partners.models import ALL_SCOPES, ApiKey, Tenant, TenantUser

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


CURL_RE = re.compile(r'^curl -s -H "X-API-Key: (?P<key>[^"]+)" (?P<url>\S+)$', re.MULTILINE)


def run_demo(*args: str) -> str:
    out = StringIO()
    call_command("demo", "--no-serve", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def banner_value(output: str, label: str) -> str:
    match = re.search(rf"^\s+{re.escape(label)}\s+(\S+)", output, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{output}"
    return match.group(1)


def test_demo_twice_seeds_once_and_issues_a_key_per_run(settings):
    first = run_demo()
    second = run_demo()

    tenant = Tenant.objects.get(slug="demo")
    assert tenant.name == "Demo Prop Firm" and tenant.enabled
    assert set(tenant.redirect_allowlist) == {"http://localhost:8000", "http://127.0.0.1:8000"}
    mapping = TenantUser.objects.get()
    assert (mapping.tenant, mapping.external_id) == (tenant, "demo-trader-1")
    assert mapping.user.email == "trader@demo.polysim.local"
    account = Account.objects.get()
    assert (account.tenant, account.owner, account.external_id) == (
        tenant,
        mapping.user,
        "demo-challenge-1",
    )
    assert account.stage == "challenge"
    assert account.cash == account.starting_balance == Decimal("10000")
    assert account.rules
    assert LedgerEntry.objects.filter(account=account).count() == 1
    assert ApiKey.objects.filter(tenant=tenant).count() == 2
    assert Tenant.objects.count() == 1
    assert banner_value(first, "API key") != banner_value(second, "API key")


def test_banner_has_working_key_curl_link_and_admin_login(settings):
    output = run_demo()
    account = Account.objects.get()
    base = settings.PUBLIC_BASE_URL

    for path in ("/admin/", "/v1/partner/", "/v1/partner/openapi.json", "/v1/partner/docs"):
        assert f"{base}{path}" in output
    assert "demo" in banner_value(output, "Tenant")

    curl = CURL_RE.search(output)
    assert curl, output
    assert curl["url"] == f"{base}/v1/partner/accounts/{account.pk}"
    assert curl["key"] == banner_value(output, "API key")
    caller = keys.authenticate(curl["key"])
    assert caller.tenant.slug == "demo"
    assert caller.scopes == frozenset(ALL_SCOPES)

    link = banner_value(output, "Login link")
    assert link.startswith(f"{base}/login/")

    admin = User.objects.get(email="admin@demo.polysim.local")
    password = re.search(r"password: (\S+)", output).group(1)
    assert admin.is_superuser and admin.is_staff and admin.check_password(password)


def test_the_curl_line_returns_the_account_envelope(client):
    output = run_demo()
    curl = CURL_RE.search(output)
    path = curl["url"].split("://", 1)[1].split("/", 1)[1]

    response = client.get(f"/{path}", HTTP_X_API_KEY=curl["key"])

    assert response.status_code == 200
    assert response.json()["starting_balance"] == "10000.00"


def test_the_login_link_leads_to_the_trader_sign_in_confirmation(client):
    link = banner_value(run_demo(), "Login link")
    path = "/" + link.split("://", 1)[1].split("/", 1)[1]

    response = client.get(path, follow=True)

    assert response.status_code == 200
    assert "accounts/login_confirm.html" in [t.name for t in response.templates]
    assert "trader@demo.polysim.local" in response.content.decode()


def test_demo_keeps_working_when_login_links_are_throttled(settings):
    settings.LOGIN_LINKS_PER_HOUR = 1
    run_demo()

    output = run_demo()  # the second link this hour is refused; the first is shown again

    assert banner_value(output, "Login link").startswith(settings.PUBLIC_BASE_URL)


def test_admin_password_can_be_fixed():
    run_demo("--admin-password", "demo-pass-123")

    assert User.objects.get(email="admin@demo.polysim.local").check_password("demo-pass-123")


def test_demo_re_enables_a_disabled_demo_tenant():
    run_demo()
    Tenant.objects.filter(slug="demo").update(enabled=False)

    output = run_demo()

    assert Tenant.objects.get(slug="demo").enabled
    assert keys.authenticate(CURL_RE.search(output)["key"]).tenant.slug == "demo"


def test_links_follow_the_served_port_unless_a_public_url_is_configured(settings):
    assert demo.base_url_for("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert demo.base_url_for("0.0.0.0", 9000) == "http://127.0.0.1:9000"
    assert demo.base_url_for("::1", 9000) == "http://[::1]:9000"
    settings.PUBLIC_BASE_URL = "https://demo.example"
    assert demo.base_url_for("0.0.0.0", 9000) == "https://demo.example"


def test_a_busy_port_is_refused_before_the_banner_and_the_seed():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = StringIO()
        with pytest.raises(CommandError, match=rf"port {port} .* in use.*make demo PORT="):
            call_command("demo", "--port", str(port), stdout=out, stderr=StringIO())
    assert "API key" not in out.getvalue()
    assert not Tenant.objects.exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(check, what: str, supervisor, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        failure = supervisor.poll()
        assert failure is None, failure
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s\n" + "\n".join(
            f"{c.name}:\n{supervisor.tail(c.name)}" for c in supervisor.children
        )
        time.sleep(0.25)


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5, follow_redirects=True)
    except httpx.HTTPError:
        return None


@pytest.mark.django_db(transaction=True)
def test_the_demo_runs_web_and_a_real_celery_worker_and_stops_every_process(tmp_path):
    """The demo's supervisor with its real children (web, worker, beat, matcher; the feed
    has its own tests): the site answers on the port, the admin's static files are served,
    a login link requested through the web process is emailed by the Celery worker process,
    and stopping leaves no process behind."""
    port = _free_port()
    output = run_demo("--port", str(port))
    key = banner_value(output, "API key")
    user_id = TenantUser.objects.get().user_id
    mail_dir = tmp_path / "mail"
    supervisor = demo.Command(stdout=StringIO(), stderr=StringIO()).supervisor(
        "127.0.0.1",
        port,
        feed=False,
        var_dir=tmp_path,
        extra_env={
            "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
            "EMAIL_FILE_PATH": str(mail_dir),
            # Nothing here may reach out: a scheduled discovery fails at once.
            "POLYMARKET_GAMMA_URL": "http://127.0.0.1:9/gamma",
            "POLYMARKET_CLOB_URL": "http://127.0.0.1:9/clob",
        },
    )
    assert [c.name for c in supervisor.children] == ["worker", "beat", "matcher", "web"]
    base = f"http://127.0.0.1:{port}"
    supervisor.start()
    try:
        home = _wait_for(lambda: _get(f"{base}/"), "the site", supervisor)
        assert home.status_code == 200
        css = _get(f"{base}/static/admin/css/base.css")
        assert (
            css is not None and css.status_code == 200 and "text/css" in css.headers["content-type"]
        )

        before = list(EmailOutbox.objects.values_list("pk", flat=True))  # the seed's link
        sent = httpx.post(
            f"{base}/v1/partner/users/{user_id}/login-link", headers={"X-API-Key": key}, timeout=10
        )
        assert sent.status_code == 202, sent.text
        outbox = EmailOutbox.objects.exclude(pk__in=before).get(to_email=TRADER_EMAIL)
        _wait_for(
            lambda: EmailOutbox.objects.get(pk=outbox.pk).status == EmailOutbox.Status.SENT,
            "the worker sending the email",
            supervisor,
        )
        [message] = [m for m in mail_dir.iterdir() if TRADER_EMAIL in m.read_text()]
        assert "/login/t/" in message.read_text()
        assert all(c.proc.poll() is None for c in supervisor.children)  # beat and matcher too
    finally:
        supervisor.stop()
    pids = [c.pid for c in supervisor.children]
    assert all(c.proc.poll() is not None for c in supervisor.children)
    assert not [pid for pid in pids if group_alive(pid)]  # gunicorn's and Celery's workers too
    for name in ("web", "worker", "beat", "matcher"):
        assert (tmp_path / "log" / f"{name}.log").stat().st_size > 0
