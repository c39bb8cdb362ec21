"""How a trader authenticates on /v1/*: personal key (Bearer or X-API-Key) or session with
CSRF on unsafe methods; the error envelope; the per-user rate limit; /v1/partner/ still wins."""

from __future__ import annotations

import pytest
from django.middleware.csrf import _get_new_csrf_string
from django.test import Client
from django.urls import clear_url_caches, include, path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIClient

from accounts.services import trader_key_create, trader_key_revoke
from core.api.views import TraderApiView
from tests.factories import AccountFactory, UserFactory, make_partner_client

pytestmark = pytest.mark.django_db


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert response["X-Error-Code"] == code
    return body


# A test-only unsafe endpoint (the order endpoints land with the engine): proves CSRF rules.
class _ProbeApi(TraderApiView):
    def post(self, request: Request) -> Response:
        return Response({"user_id": self.user.pk, "credential": self.credential})


urlpatterns = [
    path("v1/_probe", _ProbeApi.as_view()),
    path("v1/partner/", include("partners.urls")),
    path("v1/", include("trading.urls")),
]


@pytest.fixture
def probe_urls(settings):
    settings.ROOT_URLCONF = __name__
    clear_url_caches()
    yield
    clear_url_caches()


@pytest.fixture
def trader():
    user = UserFactory(email="ana@example.com")
    AccountFactory(owner=user)
    return user


def test_no_credentials_is_401_missing_credentials():
    assert_error(APIClient().get("/v1/accounts"), 401, "MISSING_CREDENTIALS")


def test_key_as_bearer_authenticates(trader):
    _, raw = trader_key_create(user=trader, name="bot")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    response = client.get("/v1/accounts")
    assert response.status_code == 200, response.content
    assert len(response.json()["data"]) == 1


def test_key_in_x_api_key_authenticates_and_records_last_use(trader):
    key, raw = trader_key_create(user=trader, name="bot")
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=raw)
    assert client.get("/v1/accounts").status_code == 200
    key.refresh_from_db()
    assert key.last_used_at is not None


@pytest.mark.parametrize(
    "presented", ["nonsense", "tk_abcdefgh_wrongsecret", "tk_ABCDEFGH_x" * 3, "tk_"]
)
def test_garbled_or_unknown_key_is_401_invalid_api_key(trader, presented):
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=presented)
    assert_error(client.get("/v1/accounts"), 401, "INVALID_API_KEY")


def test_right_prefix_with_wrong_secret_is_401(trader):
    _, raw = trader_key_create(user=trader, name="bot")
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=raw[: len("tk_12345678_")] + "x" * 43)
    assert_error(client.get("/v1/accounts"), 401, "INVALID_API_KEY")


def test_revoked_key_is_401(trader):
    key, raw = trader_key_create(user=trader, name="bot")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/v1/accounts").status_code == 200  # now cached in this process
    trader_key_revoke(key=key)
    assert_error(client.get("/v1/accounts"), 401, "INVALID_API_KEY")


def test_key_of_a_deactivated_user_is_401(trader):
    _, raw = trader_key_create(user=trader, name="bot")
    trader.is_active = False
    trader.save()
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=raw)
    assert_error(client.get("/v1/accounts"), 401, "INVALID_API_KEY")


def test_a_bad_key_is_refused_even_with_a_valid_session(trader):
    client = APIClient()
    client.force_login(trader)
    client.credentials(HTTP_X_API_KEY="tk_abcdefgh_nope")
    assert_error(client.get("/v1/accounts"), 401, "INVALID_API_KEY")


def test_partner_keys_do_not_work_here_and_trader_keys_not_there(trader, tenant):
    partner = make_partner_client(tenant)
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=partner.raw_key)
    assert_error(client.get("/v1/accounts"), 401, "INVALID_API_KEY")
    _, raw = trader_key_create(user=trader, name="bot")
    client.credentials(HTTP_X_API_KEY=raw)
    assert_error(client.get("/v1/partner/whoami"), 401, "INVALID_API_KEY")


def test_partner_routes_still_win_under_v1(partner):
    assert partner.get("/v1/partner/accounts").status_code == 200
    assert_error(partner.get("/v1/partner/nope"), 404, "NOT_FOUND")


def test_session_authenticates_reads(trader):
    client = Client()
    client.force_login(trader)
    response = client.get("/v1/accounts")
    assert response.status_code == 200, response.content


def test_session_post_without_csrf_token_is_403_csrf_failed(trader, probe_urls):
    client = Client(enforce_csrf_checks=True)
    client.force_login(trader)
    body = assert_error(
        client.post("/v1/_probe", data={}, content_type="application/json"), 403, "CSRF_FAILED"
    )
    assert "CSRF" in body["details"]["reason"]


def test_session_post_with_csrf_token_passes(trader, probe_urls):
    client = Client(enforce_csrf_checks=True)
    client.force_login(trader)
    token = _get_new_csrf_string()  # what the csrftoken cookie of a rendered page holds
    client.cookies["csrftoken"] = token
    response = client.post(
        "/v1/_probe", data={}, content_type="application/json", HTTP_X_CSRFTOKEN=token
    )
    assert response.status_code == 200, response.content
    assert response.json() == {"user_id": trader.pk, "credential": "session"}


def test_key_post_needs_no_csrf_token(trader, probe_urls):
    key, raw = trader_key_create(user=trader, name="bot")
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    response = client.post("/v1/_probe", {}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["credential"] == f"key:{key.prefix}"


def test_unauthenticated_post_is_401_not_403(probe_urls):
    client = Client(enforce_csrf_checks=True)
    assert_error(
        client.post("/v1/_probe", data={}, content_type="application/json"),
        401,
        "MISSING_CREDENTIALS",
    )


def test_rate_limit_is_per_user_with_headers(settings, trader):
    settings.RATE_LIMIT_DEFAULT_PER_SECOND = 2
    _, raw = trader_key_create(user=trader, name="bot")
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=raw)
    first = client.get("/v1/accounts")
    assert first.status_code == 200
    assert first["X-RateLimit-Remaining-Per-Second"] == "1"
    assert client.get("/v1/accounts").status_code == 200
    # the session of the same user shares the user bucket
    session = APIClient()
    session.force_login(trader)
    response = session.get("/v1/accounts")
    assert_error(response, 429, "RATE_LIMIT_EXCEEDED")
    assert int(response["Retry-After"]) >= 1
    # another user is not affected
    other = UserFactory(email="bo@example.com")
    other_client = APIClient()
    other_client.force_login(other)
    assert other_client.get("/v1/accounts").status_code == 200
