"""`manage.py demo`: an idempotent seed, a banner whose key, link and curl line work, and a
web server that serves the admin's static files even with DEBUG=0."""

from __future__ import annotations

import re
import signal
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command

from accounts.models import Account, LedgerEntry, User
from core.management.commands import demo
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


def test_serving_runs_background_components_around_runserver_with_static_files(monkeypatch):
    events: list[object] = []

    class Component:
        name = "probe"

        def start(self):
            events.append("start")

        def stop(self):
            events.append("stop")

    def fake_call_command(name, *args, **options):
        events.append((name, args, options))

    monkeypatch.setattr(demo, "call_command", fake_call_command)
    command = demo.Command(stdout=StringIO())
    monkeypatch.setattr(command, "background_components", lambda: [Component()])

    sigterm_before = signal.getsignal(signal.SIGTERM)

    command.serve("127.0.0.1", 8123)

    assert signal.getsignal(signal.SIGTERM) is sigterm_before
    assert events == [
        "start",
        (
            "runserver",
            ("127.0.0.1:8123",),
            {"use_reloader": False, "use_ipv6": False, "insecure_serving": True},
        ),
        "stop",
    ]
