"""Admin sign-in is throttled by IP and by account, and an operator can lift a lock-out
(issue #13 item 8; django-axes, settings AXES_*)."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.test import Client

from accounts.models import User

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


@pytest.fixture
def operator() -> User:
    return User.objects.create_superuser(email="ops@example.com", password=PASSWORD)


def _sign_in(email: str, password: str, ip: str) -> Client:
    client = Client(REMOTE_ADDR=ip)
    client.post("/admin/login/?next=/admin/", {"username": email, "password": password})
    return client


def _signed_in(client: Client) -> bool:
    return client.get("/admin/").status_code == 200


def test_many_wrong_passwords_then_the_right_one_does_not_sign_in(operator, settings):
    for _ in range(40):
        assert not _signed_in(_sign_in(operator.email, "wrong", "203.0.113.5"))
    locked = Client(REMOTE_ADDR="203.0.113.5")
    response = locked.post(
        "/admin/login/?next=/admin/", {"username": operator.email, "password": PASSWORD}
    )
    assert response.status_code == 429
    assert not _signed_in(locked)


def test_the_account_is_locked_whatever_the_ip(operator, settings):
    # Guessing from many addresses still locks the account (the limit counts per username).
    for n in range(settings.AXES_FAILURE_LIMIT):
        _sign_in(operator.email, "wrong", f"198.51.100.{n + 1}")
    assert not _signed_in(_sign_in(operator.email, PASSWORD, "192.0.2.77"))


def test_the_ip_is_locked_whatever_the_account(operator, settings):
    # One address trying many usernames is locked for every account, this one included.
    for n in range(settings.AXES_FAILURE_LIMIT):
        _sign_in(f"guess{n}@example.com", "wrong", "203.0.113.9")
    assert not _signed_in(_sign_in(operator.email, PASSWORD, "203.0.113.9"))
    assert _signed_in(_sign_in(operator.email, PASSWORD, "192.0.2.10"))  # others unaffected


def test_failures_on_other_accounts_from_other_ips_lock_nobody_else(operator, settings):
    for n in range(settings.AXES_FAILURE_LIMIT * 2):
        _sign_in(f"someone{n}@example.com", "wrong", f"198.51.100.{n + 1}")
    assert _signed_in(_sign_in(operator.email, PASSWORD, "192.0.2.200"))


def test_an_operator_lifts_a_lock_out(operator, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _sign_in(operator.email, "wrong", "203.0.113.5")
    assert not _signed_in(_sign_in(operator.email, PASSWORD, "192.0.2.1"))
    call_command("axes_reset_username", operator.email)
    call_command("axes_reset_ip", "203.0.113.5")
    assert _signed_in(_sign_in(operator.email, PASSWORD, "203.0.113.5"))


def test_a_right_password_below_the_limit_resets_the_count(operator, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        _sign_in(operator.email, "wrong", "203.0.113.5")
    assert _signed_in(_sign_in(operator.email, PASSWORD, "203.0.113.5"))
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        _sign_in(operator.email, "wrong", "203.0.113.5")
    assert _signed_in(_sign_in(operator.email, PASSWORD, "203.0.113.5"))


def test_the_admin_index_names_the_email_outbox_in_plain_english(operator):
    client = _sign_in(operator.email, PASSWORD, "192.0.2.30")
    page = client.get("/admin/").content.decode()
    assert "Email outbox" in page and "outboxs" not in page
