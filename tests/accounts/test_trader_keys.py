"""Personal trader API keys: format, storage, revocation, the operator command and admin."""

from __future__ import annotations

import hashlib
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import TraderApiKey
from accounts.services import trader_key_create, trader_key_revoke
from accounts.services.trader_keys import parse_prefix
from tests.factories import AccountFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def ana():
    user = UserFactory(email="ana@example.com")
    AccountFactory(owner=user)
    return user


def get_accounts(raw_key: str):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client.get("/v1/accounts")


def test_key_format_and_only_its_hash_is_stored(ana):
    key, raw = trader_key_create(user=ana, name="bot")
    assert raw.startswith(f"tk_{key.prefix}_") and len(key.prefix) == 8
    assert len(raw) == len("tk_12345678_") + 43
    assert parse_prefix(raw) == key.prefix
    stored = TraderApiKey.objects.get(pk=key.pk)
    assert stored.secret_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert raw not in {stored.prefix, stored.secret_hash, stored.name}
    assert stored.user == ana and stored.name == "bot" and stored.revoked_at is None


def test_keys_are_unique(ana):
    raws = {trader_key_create(user=ana, name="x")[1] for _ in range(5)}
    assert len(raws) == 5 and TraderApiKey.objects.filter(user=ana).count() == 5


def test_revoke_is_idempotent_and_takes_effect_at_once(ana):
    key, raw = trader_key_create(user=ana, name="bot")
    assert get_accounts(raw).status_code == 200
    first = trader_key_revoke(key=key).revoked_at
    assert first is not None
    assert trader_key_revoke(key=key).revoked_at == first
    assert get_accounts(raw).status_code == 401


def test_command_prints_the_key_alone_on_its_last_line_and_it_authenticates(ana):
    out = StringIO()
    call_command("traderkey", "create", "  ANA@example.com ", "--name", "my-bot", stdout=out)
    last = out.getvalue().rstrip("\n").splitlines()[-1]
    assert last.startswith("tk_") and " " not in last
    key = TraderApiKey.objects.get(prefix=parse_prefix(last))
    assert key.user == ana and key.name == "my-bot"
    response = get_accounts(last)
    assert response.status_code == 200 and len(response.json()["data"]) == 1


def test_command_refuses_an_unknown_email(db):
    with pytest.raises(CommandError, match="no user"):
        call_command("traderkey", "create", "nobody@example.com", stdout=StringIO())
    assert not TraderApiKey.objects.exists()


def test_command_revokes_by_prefix_without_echoing_secrets(ana):
    key, raw = trader_key_create(user=ana, name="bot")
    out = StringIO()
    call_command("traderkey", "revoke", f"tk_{key.prefix}", stdout=out)
    assert "Revoked" in out.getvalue() and raw not in out.getvalue()
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert get_accounts(raw).status_code == 401
    again = StringIO()
    call_command("traderkey", "revoke", raw, stdout=again)
    assert "already revoked" in again.getvalue() and raw not in again.getvalue()
    with pytest.raises(CommandError):
        call_command("traderkey", "revoke", "zzzzzzzz", stdout=StringIO())
    with pytest.raises(CommandError):
        call_command("traderkey", "revoke", "NOT A PREFIX", stdout=StringIO())


def test_admin_lists_keys_read_only_and_revokes_through_the_service(ana, client):
    operator = UserFactory(email="ops@example.com", is_staff=True, is_superuser=True)
    client.force_login(operator)
    key, raw = trader_key_create(user=ana, name="bot")
    url = reverse("admin:accounts_traderapikey_changelist")

    page = client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert f"tk_{key.prefix}_" in html and key.secret_hash not in html
    assert client.get(reverse("admin:accounts_traderapikey_add")).status_code == 403

    response = client.post(
        url, {"action": "revoke_keys", "_selected_action": [key.pk]}, follow=True
    )
    assert response.status_code == 200
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert get_accounts(raw).status_code == 401
