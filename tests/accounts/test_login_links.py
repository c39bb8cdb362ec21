"""Login links end to end: redirect rules, throttle, the email outbox, the confirmation pages
and single use under concurrency (docs/partner-api.md)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import threading
from decimal import Decimal

import pytest
import time_machine
from django.apps import apps
from django.conf import settings
from django.contrib.sessions.models import Session
from django.core import mail
from django.db import connection
from django.test import Client
from django.utils import timezone

from accounts.models import EmailOutbox, LoginToken
from accounts.services import (
    login_link_request,
    login_redirect_validate,
    login_token_consume,
)
from accounts.tasks import MAX_ATTEMPTS, email_outbox_send, outbox_sweep
from core import errors
from tests.email_backends import FlakyBackend
from tests.factories import AccountFactory, TenantFactory, UserFactory

LINK_RE = re.compile(r"/login/t/([A-Za-z0-9_-]+)")
DEAD_TEXT = "This sign-in link has expired or was already used."
T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def firm(db):
    return TenantFactory(
        slug="acme",
        name="Acme Prop",
        redirect_allowlist=["https://firm.example", "http://localhost:3000"],
        default_landing_url="/app/",
    )


@pytest.fixture
def trader(db):
    return UserFactory(email="trader@example.com")


@pytest.fixture
def issue(django_capture_on_commit_callbacks):
    """Issue a link the way the partner endpoint does, let the commit hooks send the email,
    and return (token, raw token read back from the delivered email)."""

    def _issue(user, tenant, redirect_url=None):
        with django_capture_on_commit_callbacks(execute=True):
            token = login_link_request(user=user, tenant=tenant, redirect_url=redirect_url)
        match = LINK_RE.search(mail.outbox[-1].body)
        assert match, mail.outbox[-1].body
        return token, match.group(1)

    return _issue


@pytest.fixture
def flaky_email(settings):
    settings.EMAIL_BACKEND = "tests.email_backends.FlakyBackend"
    FlakyBackend.reset()
    yield FlakyBackend
    FlakyBackend.reset()


def assert_private(response):
    assert response["Referrer-Policy"] == "same-origin"  # never to another site
    assert "no-store" in response["Cache-Control"]


def sign_in_through_link(client, raw):
    client.get(f"/login/t/{raw}")
    return client.post("/login/confirm")


# --- Redirect validation ------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "https://firm.example/dashboard?tab=challenge#top",
        "https://FIRM.Example/dashboard",
        "HTTPS://firm.example/",
        "https://firm.example:443/welcome",
        "http://localhost:3000/callback",
        "/app/",
        "/app/?account=abc",
    ],
)
def test_redirect_to_an_allowlisted_origin_or_our_own_path_is_accepted_unchanged(url):
    tenant = TenantFactory.build(
        redirect_allowlist=["https://firm.example", "http://localhost:3000"]
    )

    assert login_redirect_validate(tenant=tenant, redirect_url=url) == url


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/",
        "https://firm.example.evil.com/",
        "https://firm.example@evil.com/",
        "https://firm.example:8443/",
        "http://firm.example/",
        "//evil.com",
        "///evil.com",
        "/\\evil.com",
        "/\t/evil.com",
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "ftp://firm.example/",
        "app/",
        "https:///firm.example",
        "/" + "a" * 2048,
    ],
)
def test_redirect_anywhere_else_is_refused_with_redirect_not_allowed(url):
    tenant = TenantFactory.build(
        redirect_allowlist=["https://firm.example", "http://localhost:3000"]
    )

    with pytest.raises(errors.RedirectNotAllowed) as caught:
        login_redirect_validate(tenant=tenant, redirect_url=url)

    assert caught.value.status == 422
    assert caught.value.code == "REDIRECT_NOT_ALLOWED"


def test_plain_http_is_refused_even_when_the_host_is_allowlisted_for_https():
    tenant = TenantFactory.build(redirect_allowlist=["https://firm.example"])

    with pytest.raises(errors.RedirectNotAllowed):
        login_redirect_validate(tenant=tenant, redirect_url="http://firm.example/dashboard")


@pytest.mark.parametrize("missing", [None, "", "   "])
def test_no_redirect_means_the_tenants_default_landing_page(missing):
    tenant = TenantFactory.build(default_landing_url="/app/?welcome=1")

    assert login_redirect_validate(tenant=tenant, redirect_url=missing) == "/app/?welcome=1"


def test_a_refused_redirect_issues_no_link(firm, trader):
    with pytest.raises(errors.RedirectNotAllowed):
        login_link_request(user=trader, tenant=firm, redirect_url="https://evil.example/")

    assert LoginToken.objects.count() == 0
    assert EmailOutbox.objects.count() == 0


# --- Issue: throttle, storage, email ------------------------------------------------------
def test_the_sixth_link_within_an_hour_is_throttled_with_retry_after(firm, trader):
    with time_machine.travel(T0, tick=False) as clock:
        for _ in range(5):
            login_link_request(user=trader, tenant=firm, redirect_url=None)
            clock.shift(dt.timedelta(minutes=2))
        # now T0 + 10 min: the oldest link leaves the window at T0 + 60 min
        with pytest.raises(errors.LoginLinkThrottled) as caught:
            login_link_request(user=trader, tenant=firm, redirect_url=None)

    assert caught.value.status == 429
    assert caught.value.code == "LOGIN_LINK_THROTTLED"
    assert caught.value.headers["Retry-After"] == str(50 * 60)
    assert LoginToken.objects.filter(user=trader).count() == 5
    assert EmailOutbox.objects.count() == 5


def test_a_link_can_be_issued_again_once_the_oldest_leaves_the_hour(firm, trader):
    with time_machine.travel(T0, tick=False) as clock:
        for _ in range(5):
            login_link_request(user=trader, tenant=firm, redirect_url=None)
        clock.shift(dt.timedelta(hours=1, seconds=1))

        login_link_request(user=trader, tenant=firm, redirect_url=None)

    assert LoginToken.objects.filter(user=trader).count() == 6


def test_the_throttle_counts_each_tenant_separately(firm, trader):
    rival = TenantFactory(slug="rival", name="Rival Prop")
    for _ in range(5):
        login_link_request(user=trader, tenant=firm, redirect_url=None)

    login_link_request(user=trader, tenant=rival, redirect_url=None)

    assert LoginToken.objects.filter(user=trader, tenant=rival).count() == 1


def test_the_throttle_counts_each_user_separately(firm, trader):
    for _ in range(5):
        login_link_request(user=trader, tenant=firm, redirect_url=None)

    login_link_request(user=UserFactory(), tenant=firm, redirect_url=None)

    assert LoginToken.objects.filter(tenant=firm).count() == 6


def test_the_link_is_emailed_through_the_backend_and_its_token_signs_in_once(firm, trader, issue):
    token, raw = issue(trader, firm, "https://firm.example/dashboard")

    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    outbox = EmailOutbox.objects.get()
    assert message.to == ["trader@example.com"]
    assert message.subject == "Your polysim sign-in link"
    assert f"{settings.PUBLIC_BASE_URL}/login/t/{raw}" in message.body
    assert "Acme Prop" in message.body
    html, mimetype = message.alternatives[0]
    assert mimetype == "text/html"
    assert f"/login/t/{raw}" in html
    assert message.extra_headers["X-Idempotency-Key"] == f"outbox-{outbox.pk}"
    assert outbox.kind == "login_link"
    assert outbox.status == EmailOutbox.Status.SENT
    assert outbox.attempts == 1
    assert outbox.sent_at is not None
    assert outbox.payload == {"login_token_id": token.pk}
    consumed = login_token_consume(raw_token=raw)
    assert consumed is not None and consumed.pk == token.pk and consumed.user == trader
    assert login_token_consume(raw_token=raw) is None


def test_the_link_expires_fifteen_minutes_after_issue(firm, trader, issue):
    with time_machine.travel(T0, tick=False):
        token, raw = issue(trader, firm)

    assert token.expires_at == T0 + dt.timedelta(seconds=settings.LOGIN_LINK_TTL_SECONDS)
    with time_machine.travel(token.expires_at + dt.timedelta(seconds=1), tick=False):
        assert login_token_consume(raw_token=raw) is None
    assert LoginToken.objects.get(pk=token.pk).used_at is None


def test_a_newer_link_leaves_older_unused_links_valid(firm, trader, issue):
    older, older_raw = issue(trader, firm)
    newer, newer_raw = issue(trader, firm)

    assert login_token_consume(raw_token=older_raw).pk == older.pk
    assert login_token_consume(raw_token=newer_raw).pk == newer.pk


def test_the_database_never_holds_a_raw_token(firm, trader, issue, client):
    token, raw = issue(trader, firm)
    client.get(f"/login/t/{raw}")  # parks the link in a database-backed session
    client.get("/login/confirm")

    stored: list[str] = []
    for model in apps.get_models():
        for row in model._base_manager.all().values():
            stored.extend(str(value) for value in row.values())
    stored.extend(json.dumps(s.get_decoded()) for s in Session.objects.all())

    assert stored, "the scan must have read something"
    assert not [value for value in stored if raw in value]
    assert (
        LoginToken.objects.get(pk=token.pk).token_hash == hashlib.sha256(raw.encode()).hexdigest()
    )


def test_unknown_and_malformed_tokens_consume_nothing(firm, trader, issue):
    issue(trader, firm)

    assert login_token_consume(raw_token="A" * 43) is None
    assert login_token_consume(raw_token="") is None
    assert login_token_consume(raw_token="x" * 10_000) is None
    assert LoginToken.objects.filter(used_at__isnull=False).count() == 0


# --- The pages ----------------------------------------------------------------------------
def test_opening_the_link_parks_it_in_the_session_and_removes_it_from_the_url(
    firm, trader, issue, client
):
    token, raw = issue(trader, firm)

    response = client.get(f"/login/t/{raw}")

    assert response.status_code == 302
    assert response["Location"] == "/login/confirm"
    assert_private(response)
    token.refresh_from_db()
    assert token.used_at is None


def test_head_and_get_of_the_link_and_the_confirm_page_never_consume_it(
    firm, trader, issue, client
):
    token, raw = issue(trader, firm)

    assert client.head(f"/login/t/{raw}").status_code == 302
    assert client.get(f"/login/t/{raw}").status_code == 302
    assert client.head("/login/confirm").status_code == 200
    confirm = client.get("/login/confirm")

    assert confirm.status_code == 200
    assert "Sign in to polysim as trader@example.com?" in confirm.content.decode()
    assert 'method="post"' in confirm.content.decode()
    assert_private(confirm)
    token.refresh_from_db()
    assert token.used_at is None
    assert "_auth_user_id" not in client.session


def test_confirming_signs_in_with_a_new_session_key_and_redirects(firm, trader, issue, client):
    token, raw = issue(trader, firm, "https://firm.example/dashboard")
    client.get(f"/login/t/{raw}")
    anonymous_key = client.cookies[settings.SESSION_COOKIE_NAME].value

    response = client.post("/login/confirm")

    assert response.status_code == 302
    assert response["Location"] == "https://firm.example/dashboard"
    assert_private(response)
    assert client.cookies[settings.SESSION_COOKIE_NAME].value != anonymous_key
    assert client.session["_auth_user_id"] == str(trader.pk)
    assert "login_link_token_hash" not in client.session
    token.refresh_from_db()
    assert token.used_at is not None
    landing = client.get("/app/", follow=True)
    assert landing.redirect_chain == [("/portfolio/", 302)]
    assert '<span class="muted topbar-email">trader@example.com</span>' in landing.content.decode()


def test_an_already_signed_in_trader_still_gets_a_new_session_key(firm, trader, issue, client):
    _, first = issue(trader, firm)
    _, second = issue(trader, firm)
    sign_in_through_link(client, first)
    signed_in_key = client.cookies[settings.SESSION_COOKIE_NAME].value

    response = sign_in_through_link(client, second)

    assert response.status_code == 302
    assert client.cookies[settings.SESSION_COOKIE_NAME].value != signed_in_key
    assert client.session["_auth_user_id"] == str(trader.pk)


def test_the_confirm_form_requires_a_csrf_token(firm, trader, issue):
    token, raw = issue(trader, firm)
    browser = Client(enforce_csrf_checks=True)
    browser.get(f"/login/t/{raw}")

    response = browser.post("/login/confirm")

    assert response.status_code == 403
    token.refresh_from_db()
    assert token.used_at is None


def test_a_link_confirmed_in_one_browser_is_dead_in_another(firm, trader, issue):
    _, raw = issue(trader, firm)
    first, second = Client(), Client()
    first.get(f"/login/t/{raw}")
    second.get(f"/login/t/{raw}")
    assert first.post("/login/confirm").status_code == 302

    response = second.post("/login/confirm")

    assert response.status_code == 410
    assert DEAD_TEXT in response.content.decode()
    assert "Email me a new sign-in link" in response.content.decode()
    assert_private(response)
    assert "_auth_user_id" not in second.session


def test_reopening_a_used_link_shows_the_friendly_page(firm, trader, issue, client):
    _, raw = issue(trader, firm)
    sign_in_through_link(client, raw)
    client.logout()

    client.get(f"/login/t/{raw}")
    page = client.get("/login/confirm")
    replay = client.post("/login/confirm")

    assert page.status_code == replay.status_code == 410
    assert DEAD_TEXT in page.content.decode()
    assert "_auth_user_id" not in client.session


def test_an_expired_link_shows_the_friendly_page_and_does_not_sign_in(firm, trader, issue, client):
    with time_machine.travel(T0, tick=False):
        token, raw = issue(trader, firm)
    with time_machine.travel(token.expires_at + dt.timedelta(seconds=1), tick=False):
        client.get(f"/login/t/{raw}")
        page = client.get("/login/confirm")
        client.get(f"/login/t/{raw}")
        post = client.post("/login/confirm")

    assert page.status_code == post.status_code == 410
    assert DEAD_TEXT in page.content.decode()
    assert DEAD_TEXT in post.content.decode()
    assert "_auth_user_id" not in client.session


def test_unknown_expired_and_missing_links_are_indistinguishable(firm, trader, issue):
    with time_machine.travel(T0, tick=False):
        token, raw = issue(trader, firm)
    with time_machine.travel(token.expires_at + dt.timedelta(seconds=1), tick=False):
        expired = Client()
        expired.get(f"/login/t/{raw}")
        expired_page = expired.get("/login/confirm")
        unknown = Client()
        unknown.get("/login/t/" + "B" * 43)
        unknown_page = unknown.get("/login/confirm")
        garbage = Client()
        garbage.get("/login/t/not%20a%20token")
        garbage_page = garbage.get("/login/confirm")
        no_session_page = Client().get("/login/confirm")
        no_session_post = Client().post("/login/confirm")

    pages = [expired_page, unknown_page, garbage_page, no_session_page, no_session_post]
    assert {p.status_code for p in pages} == {410}
    assert {p.content for p in pages} == {expired_page.content}
    assert DEAD_TEXT in expired_page.content.decode()
    # Not a dead end: the page links to the self-service sign-in, and tells a firm's trader
    # where a new link comes from.
    html = expired_page.content.decode()
    assert 'href="/login/" data-testid="new-link"' in html
    assert "from the firm&#x27;s dashboard" in html or "from the firm's dashboard" in html


def test_a_deactivated_trader_cannot_use_a_link(firm, trader, issue, client):
    _, raw = issue(trader, firm)
    trader.is_active = False
    trader.save(update_fields=["is_active"])

    response = sign_in_through_link(client, raw)

    assert response.status_code == 410
    assert "_auth_user_id" not in client.session


def test_a_redirect_whose_origin_was_removed_since_issue_lands_on_the_default_page(
    firm, trader, issue, client
):
    _, raw = issue(trader, firm, "https://firm.example/dashboard")
    firm.redirect_allowlist = []
    firm.save(update_fields=["redirect_allowlist"])

    response = sign_in_through_link(client, raw)

    assert response.status_code == 302
    assert response["Location"] == "/app/"


def test_a_link_without_redirect_lands_on_the_tenants_default_page(firm, trader, issue, client):
    firm.default_landing_url = "/app/?from=acme"
    firm.save(update_fields=["default_landing_url"])
    _, raw = issue(trader, firm)

    response = sign_in_through_link(client, raw)

    assert response["Location"] == "/app/?from=acme"


def test_the_landing_page_is_the_portfolio_of_the_traders_own_accounts(firm, trader, client):
    AccountFactory(owner=trader, starting_balance=Decimal("2500.5"))
    AccountFactory(
        owner=trader,
        tenant=firm,
        external_id="ch-001",
        stage="challenge",
        starting_balance=Decimal("10000"),
        cash=Decimal("9876.54321"),
    )
    AccountFactory(owner=UserFactory(), tenant=firm, external_id="someone-else", stage="demo")
    client.force_login(trader)

    page = client.get("/app/", follow=True)

    text = page.content.decode()
    assert page.status_code == 200
    assert page.redirect_chain == [("/portfolio/", 302)]
    assert "trader@example.com" in text
    assert "Personal account" in text  # the personal account opens first
    assert "Acme Prop · ch-001 · Challenge" in text  # the firm's, in the switcher
    assert "someone-else" not in text
    assert "no-store" in page["Cache-Control"]


def test_the_landing_page_sends_anonymous_visitors_to_sign_in(client, db):
    response = client.get("/app/")

    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=/app/")


def test_the_sign_in_page_explains_that_firms_email_the_link(client, db):
    response = client.get("/login/")

    assert response.status_code == 200
    assert "link your firm emails you" in response.content.decode()


def test_signing_out_requires_post_and_ends_the_session(trader, client):
    client.force_login(trader)

    assert client.get("/logout/").status_code == 405
    response = client.post("/logout/")

    assert response.status_code == 302
    assert response["Location"] == "/login/"
    assert client.get("/app/").status_code == 302


# --- The outbox ---------------------------------------------------------------------------
def test_a_failed_send_stays_pending_and_the_sweeper_delivers_it_exactly_once(
    firm, trader, flaky_email, django_capture_on_commit_callbacks
):
    flaky_email.reset(failures=1)
    with time_machine.travel(T0, tick=False) as clock:
        with django_capture_on_commit_callbacks(execute=True):
            login_link_request(user=trader, tenant=firm, redirect_url=None)
        row = EmailOutbox.objects.get()
        assert row.status == EmailOutbox.Status.PENDING
        assert row.attempts == 1
        assert "ConnectionRefusedError" in row.last_error
        assert row.next_attempt_at > T0
        assert mail.outbox == []

        with django_capture_on_commit_callbacks(execute=True):
            assert outbox_sweep() == 0  # not due yet
        clock.move_to(row.next_attempt_at)
        with django_capture_on_commit_callbacks(execute=True):
            assert outbox_sweep() == 1
        with django_capture_on_commit_callbacks(execute=True):
            assert outbox_sweep() == 0
        assert email_outbox_send(row.pk) == "skipped"

    row.refresh_from_db()
    assert row.status == EmailOutbox.Status.SENT
    assert row.attempts == 2
    assert row.last_error == ""
    assert flaky_email.attempts == 2
    assert len(mail.outbox) == 1
    assert LINK_RE.search(mail.outbox[0].body)


def test_a_lost_enqueue_is_recovered_by_the_sweeper(
    firm, trader, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):  # the broker never got the task
        login_link_request(user=trader, tenant=firm, redirect_url=None)
    assert mail.outbox == []

    with django_capture_on_commit_callbacks(execute=True):
        assert outbox_sweep() == 1

    assert len(mail.outbox) == 1
    assert EmailOutbox.objects.get().status == EmailOutbox.Status.SENT


def test_a_broker_outage_still_accepts_the_partner_request_and_the_sweep_sends_it(
    firm, trader, monkeypatch, django_capture_on_commit_callbacks
):
    from tests.factories import make_partner_client

    def broker_down(*args, **kwargs):
        raise ConnectionError("broker unreachable")

    real_delay = email_outbox_send.delay
    monkeypatch.setattr(email_outbox_send, "delay", broker_down)
    client = make_partner_client(firm)
    registered = client.post(
        "/v1/partner/users", {"external_id": "c-1", "email": trader.email}, format="json"
    )
    user_id = registered.json()["user_id"]
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(f"/v1/partner/users/{user_id}/login-link", {}, format="json")
    assert len(callbacks) == 1, (response.status_code, response.content)  # ran, and failed
    assert response.status_code == 202, response.content
    row = EmailOutbox.objects.get()
    assert row.status == EmailOutbox.Status.PENDING and mail.outbox == []

    monkeypatch.setattr(email_outbox_send, "delay", real_delay)  # the broker is back
    with django_capture_on_commit_callbacks(execute=True):
        assert outbox_sweep() == 1
    assert len(mail.outbox) == 1
    assert EmailOutbox.objects.get().status == EmailOutbox.Status.SENT


def test_retries_back_off_and_give_up_after_the_last_attempt(
    firm, trader, flaky_email, django_capture_on_commit_callbacks
):
    flaky_email.reset(failures=1000)
    with django_capture_on_commit_callbacks(execute=False):
        login_link_request(user=trader, tenant=firm, redirect_url=None)
    row = EmailOutbox.objects.get()

    delays = []
    for _ in range(MAX_ATTEMPTS):
        before = timezone.now()
        assert email_outbox_send(row.pk) in ("retry", "failed")
        row.refresh_from_db()
        delays.append(row.next_attempt_at - before)

    assert row.status == EmailOutbox.Status.FAILED
    assert row.attempts == MAX_ATTEMPTS
    assert delays[1] > delays[0]
    assert max(delays[:-1]) <= dt.timedelta(hours=1, seconds=1)
    assert email_outbox_send(row.pk) == "skipped"
    assert flaky_email.attempts == MAX_ATTEMPTS
    assert mail.outbox == []


@pytest.mark.parametrize("fate", ["used", "expired"])
def test_a_link_that_died_before_sending_is_not_emailed(
    firm, trader, fate, django_capture_on_commit_callbacks
):
    with time_machine.travel(T0, tick=False), django_capture_on_commit_callbacks(execute=False):
        token = login_link_request(user=trader, tenant=firm, redirect_url=None)
    row = EmailOutbox.objects.get()
    when = T0 + dt.timedelta(seconds=1)
    if fate == "used":
        LoginToken.objects.filter(pk=token.pk).update(used_at=T0)
    else:
        when = token.expires_at + dt.timedelta(seconds=1)

    with time_machine.travel(when, tick=False):
        assert email_outbox_send(row.pk) == "dead"

    row.refresh_from_db()
    assert row.status == EmailOutbox.Status.FAILED
    assert "expired or already used" in row.last_error
    assert mail.outbox == []


# --- Concurrency (Postgres) ---------------------------------------------------------------
def run_in_threads(count, work):
    """Start `count` threads that wait on one barrier, run `work()` and return the results
    (exceptions are returned, not raised)."""
    barrier = threading.Barrier(count)
    results = [None] * count

    def run(index):
        try:
            barrier.wait(timeout=10)
            results[index] = work()
        except Exception as exc:
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    return results


@pytest.mark.django_db(transaction=True)
class TestUnderConcurrency:
    def test_eight_simultaneous_consumes_of_one_token_give_exactly_one_winner(self):
        tenant = TenantFactory(slug="acme-concurrency", name="Acme Prop")
        user = UserFactory(email="racer@example.com")
        token = login_link_request(user=user, tenant=tenant, redirect_url=None)
        raw = LINK_RE.search(mail.outbox[-1].body).group(1)

        results = run_in_threads(8, lambda: login_token_consume(raw_token=raw))

        assert not [r for r in results if isinstance(r, Exception)], results
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert winners[0].pk == token.pk and winners[0].user_id == user.pk
        assert LoginToken.objects.get(pk=token.pk).used_at is not None

    def test_simultaneous_link_requests_never_exceed_the_hourly_limit(self):
        tenant = TenantFactory(slug="acme-throttle", name="Acme Prop")
        user = UserFactory(email="spammer@example.com")
        for _ in range(3):
            login_link_request(user=user, tenant=tenant, redirect_url=None)

        results = run_in_threads(
            8, lambda: login_link_request(user=user, tenant=tenant, redirect_url=None)
        )

        issued = [r for r in results if isinstance(r, LoginToken)]
        throttled = [r for r in results if isinstance(r, errors.LoginLinkThrottled)]
        assert len(issued) == 2, results
        assert len(throttled) == 6, results
        assert LoginToken.objects.filter(user=user, tenant=tenant).count() == 5
        assert len(mail.outbox) == 5
