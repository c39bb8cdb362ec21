"""The API keys page: create (the secret shown once, only on that response), list, revoke with
a confirmation step, only ever the signed-in trader's own keys; CSRF on every POST."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import TraderApiKey
from accounts.services import trader_key_create
from accounts.services.trader_keys import hash_key
from tests.factories import UserFactory, personal_account

pytestmark = pytest.mark.django_db


@pytest.fixture
def ana():
    return UserFactory(email="ana@example.com")


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def api_status(raw_key: str) -> int:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client.get("/v1/accounts").status_code


def test_anonymous_visitors_are_sent_to_sign_in(client):
    assert client.get("/keys/")["Location"].startswith("/login/?next=/keys/")


def test_a_new_key_is_shown_once_and_works(ana):
    personal_account(ana)
    client = signed_in(ana)

    response = client.post("/keys/", {"label": "market-maker bot"})

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    page = response.content.decode()
    raw = re.search(r'data-testid="key-secret"', page) and re.search(
        r'value="(tk_[a-z0-9]+_[A-Za-z0-9_-]+)"', page
    ).group(1)
    key = TraderApiKey.objects.get(user=ana)
    assert key.name == "market-maker bot"
    assert raw.startswith(f"tk_{key.prefix}_") and key.secret_hash == hash_key(raw)
    assert api_status(raw) == 200
    # Never again: the list shows the prefix and label, not the secret.
    listing = client.get("/keys/").content.decode()
    assert raw not in listing
    assert f"tk_{key.prefix}_…" in listing and "market-maker bot" in listing
    assert 'data-testid="key-created"' not in listing


def test_the_list_shows_only_the_traders_own_keys_with_last_use(ana):
    mine, raw = trader_key_create(user=ana, name="mine")
    theirs, _ = trader_key_create(user=UserFactory(email="bo@example.com"), name="theirs")
    api_status(raw)  # records last use

    page = signed_in(ana).get("/keys/").content.decode()

    rows = re.findall(r'<tr data-testid="key-row" data-key-prefix="([a-z0-9]+)">', page)
    assert rows == [mine.prefix]
    assert "theirs" not in page and theirs.prefix not in page
    row = re.search(r'<tr data-testid="key-row".*?</tr>', page, re.S).group(0)
    assert "never" not in row  # last used is shown as a time


def test_revoking_asks_first_then_the_key_stops_working(ana):
    personal_account(ana)
    key, raw = trader_key_create(user=ana, name="bot")
    client = signed_in(ana)
    assert api_status(raw) == 200

    confirm_page = client.get(f"/keys/{key.pk}/revoke/")
    assert confirm_page.status_code == 200
    assert 'data-testid="key-revoke-confirm"' in confirm_page.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is None  # the GET changed nothing

    response = client.post(f"/keys/{key.pk}/revoke/")

    assert response.status_code == 302 and response["Location"] == "/keys/"
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert api_status(raw) == 401
    listing = client.get("/keys/").content.decode()
    assert "revoked" in listing
    assert 'data-testid="revoked-key-row"' in listing and 'data-testid="key-row"' not in listing


def test_another_traders_key_cannot_be_revoked(ana):
    theirs, _raw = trader_key_create(user=UserFactory(email="bo@example.com"))
    client = signed_in(ana)

    assert client.get(f"/keys/{theirs.pk}/revoke/").status_code == 404
    assert client.post(f"/keys/{theirs.pk}/revoke/").status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


def test_a_too_long_label_is_explained(ana):
    response = signed_in(ana).post("/keys/", {"label": "x" * 101})

    assert response.status_code == 400
    assert "Keep the label to 100 characters or fewer." in response.content.decode()
    assert not TraderApiKey.objects.exists()


def test_creating_and_revoking_keys_require_the_csrf_token(ana):
    key, _ = trader_key_create(user=ana)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(ana)

    assert browser.post("/keys/", {"label": "x"}).status_code == 403
    assert browser.post(f"/keys/{key.pk}/revoke/").status_code == 403
    assert TraderApiKey.objects.filter(user=ana).count() == 1
    key.refresh_from_db()
    assert key.revoked_at is None
