"""Retail sign-in on /login/: anyone can ask for a link by email; the answer (and the work done)
is the same whether or not the address is known; throttles per email and per client IP
with a clear message; the first confirmed sign-in opens one personal account with
PERSONAL_ACCOUNT_DEFAULT_BALANCE; CSRF on every POST; sign-out."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.core import mail
from django.db import connection
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext

from accounts.models import Account, LedgerEntry, LoginToken, User
from accounts.services import login
from accounts.services.login import login_link_request
from accounts.views import client_ip
from tests.factories import TenantFactory, UserFactory

pytestmark = pytest.mark.django_db

LINK_RE = re.compile(r"/login/t/([A-Za-z0-9_-]+)")


@pytest.fixture(autouse=True)
def _commit_hooks_run(django_capture_on_commit_callbacks):
    """The test transaction never commits; run the on-commit hooks (the outbox send) of
    each request as the real commit would."""
    global _hooks
    _hooks = django_capture_on_commit_callbacks
    yield


_hooks = None


def ask(client, email: str, ip: str = "203.0.113.7"):
    with _hooks(execute=True):
        return client.post("/login/", {"email": email}, REMOTE_ADDR=ip)


def statements(captured: CaptureQueriesContext) -> list[str]:
    """The SQL run, with literal values and savepoint names blanked out."""
    return [
        re.sub(r"'[^']*'|\"s\d+_x\d+\"|\b\d+\b", "?", q["sql"]) for q in captured.captured_queries
    ]


def last_link() -> str:
    return LINK_RE.search(mail.outbox[-1].body).group(1)


def confirm(client, raw: str):
    client.get(f"/login/t/{raw}")
    return client.post("/login/confirm")


def test_the_sign_in_page_has_an_accessible_email_form(client):
    page = client.get("/login/").content.decode()

    assert 'data-testid="login-form"' in page and 'method="post"' in page
    assert '<label for="id_email">Email</label>' in page
    assert 'autocomplete="email"' in page
    assert "csrfmiddlewaretoken" in page


def test_known_and_unknown_emails_get_the_same_answer_and_the_same_work(client):
    UserFactory(email="known@example.com")

    with CaptureQueriesContext(connection) as known_queries:
        known = ask(client, "known@example.com")
    with CaptureQueriesContext(connection) as unknown_queries:
        unknown = ask(client, "Unknown@Example.com")

    assert known.status_code == unknown.status_code == 302
    assert known["Location"] == unknown["Location"] == "/login/sent/"
    assert known.content == unknown.content
    # Same statements in the same order (values aside): no timing or behaviour tells them apart.
    assert len(known_queries) == len(unknown_queries)
    assert statements(known_queries) == statements(unknown_queries)
    assert [m.to for m in mail.outbox] == [["known@example.com"], ["unknown@example.com"]]
    sent = client.get("/login/sent/")
    assert sent.status_code == 200 and "Check your inbox" in sent.content.decode()


def test_a_new_email_gets_a_user_and_at_first_sign_in_one_personal_account(client):
    ask(client, "new@example.com")
    user = User.objects.get(email="new@example.com")
    assert not Account.objects.filter(owner=user).exists()  # nothing for an unproven address
    token = LoginToken.objects.get(user=user)
    assert token.tenant is None and token.redirect_url == "/portfolio/"

    response = confirm(client, last_link())

    assert response.status_code == 302 and response["Location"] == "/portfolio/"
    account = Account.objects.get(owner=user)
    assert account.tenant is None
    assert account.starting_balance == account.cash == Decimal("1000")
    assert list(LedgerEntry.objects.filter(account=account).values_list("kind", "amount")) == [
        ("INITIAL_DEPOSIT", Decimal("1000"))
    ]
    portfolio = client.get("/portfolio/").content.decode()
    assert "Personal account" in portfolio and "$1,000.00" in portfolio


def test_the_default_balance_is_a_setting_and_a_second_sign_in_opens_nothing_new(client, settings):
    settings.PERSONAL_ACCOUNT_DEFAULT_BALANCE = Decimal("2500")
    ask(client, "new@example.com")
    confirm(client, last_link())
    client.post("/logout/")
    ask(client, "new@example.com")
    confirm(client, last_link())

    accounts = Account.objects.filter(owner__email="new@example.com")
    assert accounts.count() == 1
    assert accounts.get().starting_balance == Decimal("2500")


def test_a_firm_link_opens_no_personal_account(client):
    firm = TenantFactory(slug="acme", name="Acme Prop")
    trader = UserFactory(email="t@example.com")
    with _hooks(execute=True):
        login_link_request(user=trader, tenant=firm, redirect_url=None)

    assert confirm(client, last_link()).status_code == 302
    assert not Account.objects.filter(owner=trader).exists()


def test_a_bad_email_is_explained_and_creates_nothing(client):
    response = ask(client, "not-an-email")

    assert response.status_code == 400
    page = response.content.decode()
    assert "Enter a valid email address" in page and 'aria-invalid="true"' in page
    assert not User.objects.exists() and mail.outbox == []


def test_too_many_links_for_one_email_is_a_clear_429(client, settings):
    settings.LOGIN_LINKS_PER_HOUR = 2
    assert ask(client, "a@example.com").status_code == 302
    assert ask(client, "a@example.com").status_code == 302

    response = ask(client, "a@example.com")

    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert "Too many sign-in links were sent to this address" in response.content.decode()
    assert LoginToken.objects.filter(user__email="a@example.com").count() == 2


def test_too_many_requests_from_one_ip_is_a_clear_429_and_creates_no_user(client, settings):
    settings.LOGIN_REQUESTS_PER_IP_PER_HOUR = 2
    ask(client, "one@example.com")
    ask(client, "two@example.com")

    response = ask(client, "three@example.com")

    assert response.status_code == 429
    assert "Too many sign-in requests came from your network" in response.content.decode()
    assert not User.objects.filter(email="three@example.com").exists()
    assert ask(client, "three@example.com", ip="198.51.100.9").status_code == 302


def test_the_ip_limit_is_shared_through_redis(client, settings, monkeypatch):
    settings.LOGIN_REQUESTS_PER_IP_PER_HOUR = 1
    assert ask(client, "one@example.com").status_code == 302
    # A fresh client, as another web process has: the count lives in Redis.
    monkeypatch.setattr(login, "_redis_clients", {})

    assert ask(Client(), "two@example.com").status_code == 429


def test_the_client_ip_comes_from_the_trusted_proxy_hop_only(settings):
    request = RequestFactory().get(
        "/login/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.7"
    )
    settings.CLIENT_IP_PROXY_COUNT = 0
    assert client_ip(request) == "10.0.0.2"
    settings.CLIENT_IP_PROXY_COUNT = 1
    assert client_ip(request) == "203.0.113.7"  # the spoofable left entry is ignored


def test_asking_for_a_link_requires_the_csrf_token(db):
    browser = Client(enforce_csrf_checks=True)

    response = browser.post("/login/", {"email": "a@example.com"})

    assert response.status_code == 403
    assert not User.objects.exists()
    page = browser.get("/login/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    accepted = browser.post("/login/", {"email": "a@example.com", "csrfmiddlewaretoken": token})
    assert accepted.status_code == 302


def test_sign_out_is_a_csrf_protected_post(db):
    user = UserFactory(email="a@example.com")
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)

    assert browser.post("/logout/").status_code == 403
    page = browser.get("/keys/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = browser.post("/logout/", {"csrfmiddlewaretoken": token})

    assert response.status_code == 302 and response["Location"] == "/login/"
    assert browser.get("/portfolio/").status_code == 302
