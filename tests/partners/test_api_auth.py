"""Authentication, scopes, tenant enablement and the error envelope on the partner API."""

from __future__ import annotations

import pytest
from django.urls import path
from rest_framework.test import APIClient

from partners.models import Scope
from partners.services import apikey_revoke, tenant_set_enabled
from tests.factories import make_partner_client

pytestmark = pytest.mark.django_db


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert response["X-Error-Code"] == code
    assert response["X-Request-Id"]
    return body


def test_no_key_is_401_missing_api_key():
    assert_error(APIClient().get("/v1/partner/whoami"), 401, "MISSING_API_KEY")


@pytest.mark.parametrize(
    "key",
    ["nonsense", "pk_abcdefgh_wrongsecret", "pk_ABCDEFGH_x" * 3, "Bearer", "pk_"],
)
def test_unknown_or_garbled_key_is_401_invalid_api_key(tenant, key):
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=key)
    assert_error(client.get("/v1/partner/whoami"), 401, "INVALID_API_KEY")


def test_right_prefix_with_wrong_secret_is_401(partner):
    prefix_part = partner.raw_key[: len("pk_12345678_")]
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=prefix_part + "x" * 43)
    assert_error(client.get("/v1/partner/whoami"), 401, "INVALID_API_KEY")


def test_bearer_is_an_alias_and_x_api_key_wins(tenant, other_tenant):
    ours = make_partner_client(tenant)
    theirs = make_partner_client(other_tenant)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ours.raw_key}")
    assert client.get("/v1/partner/whoami").json()["tenant"]["slug"] == "acme"
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ours.raw_key}", HTTP_X_API_KEY=theirs.raw_key)
    assert client.get("/v1/partner/whoami").json()["tenant"]["slug"] == "rival"


def test_key_in_query_string_is_not_accepted(partner):
    client = APIClient()
    response = client.get(f"/v1/partner/whoami?api_key={partner.raw_key}")
    assert_error(response, 401, "MISSING_API_KEY")


def test_revoked_key_is_401(partner):
    assert partner.get("/v1/partner/whoami").status_code == 200
    apikey_revoke(api_key=partner.api_key)
    assert_error(partner.get("/v1/partner/whoami"), 401, "INVALID_API_KEY")


def test_expired_key_is_401(partner):
    from django.utils import timezone

    partner.api_key.expires_at = timezone.now()
    partner.api_key.save()
    assert_error(partner.get("/v1/partner/whoami"), 401, "INVALID_API_KEY")


def test_disabled_tenant_sees_404_on_every_path(partner, tenant):
    tenant_set_enabled(tenant=tenant, enabled=False)
    for method, url in [
        ("get", "/v1/partner/whoami"),
        ("get", "/v1/partner/users"),
        ("post", "/v1/partner/users"),
        ("get", "/v1/partner/accounts"),
        ("post", "/v1/partner/accounts/00000000-0000-0000-0000-000000000000/close"),
    ]:
        assert_error(getattr(partner, method)(url, {}, format="json"), 404, "NOT_FOUND")


def test_read_only_key_cannot_write_but_can_read(tenant):
    reader = make_partner_client(tenant, scopes=[Scope.ACCOUNTS_READ])
    assert reader.get("/v1/partner/accounts").status_code == 200
    body = assert_error(
        reader.post(
            "/v1/partner/users", {"external_id": "x", "email": "x@example.com"}, format="json"
        ),
        403,
        "INSUFFICIENT_PERMISSION",
    )
    assert body["details"]["required_scope"] == "users:write"
    assert_error(
        reader.post("/v1/partner/accounts", {}, format="json"), 403, "INSUFFICIENT_PERMISSION"
    )


def test_write_only_key_cannot_read(tenant):
    writer = make_partner_client(tenant, scopes=[Scope.USERS_WRITE])
    assert_error(writer.get("/v1/partner/users"), 403, "INSUFFICIENT_PERMISSION")


def test_check_order_invalid_key_before_scope_and_object(tenant):
    client = APIClient()
    client.credentials(HTTP_X_API_KEY="pk_zzzzzzzz_" + "y" * 43)
    assert_error(client.post("/v1/partner/accounts/not-a-uuid/reset"), 401, "INVALID_API_KEY")


def test_scope_is_checked_before_the_object(tenant):
    reader = make_partner_client(tenant, scopes=[Scope.ACCOUNTS_READ])
    assert_error(
        reader.post("/v1/partner/accounts/not-a-uuid/reset"), 403, "INSUFFICIENT_PERMISSION"
    )


def test_unknown_route_is_json_404(partner):
    assert_error(partner.get("/v1/partner/nope"), 404, "NOT_FOUND")
    assert_error(APIClient().get("/v1/nothing-here"), 404, "NOT_FOUND")


def test_wrong_method_is_405_envelope(partner):
    assert_error(partner.delete("/v1/partner/users"), 405, "METHOD_NOT_ALLOWED")
    assert_error(partner.put("/v1/partner/whoami", {}, format="json"), 405, "METHOD_NOT_ALLOWED")


def test_bad_json_is_400_malformed_json(partner):
    response = partner.post("/v1/partner/users", data="{not json", content_type="application/json")
    assert_error(response, 400, "MALFORMED_JSON")


def test_non_json_content_type_is_malformed_json(partner):
    response = partner.post("/v1/partner/users", data="a=b", content_type="text/plain")
    assert_error(response, 400, "MALFORMED_JSON")


def test_request_id_is_echoed_or_minted(partner):
    echoed = partner.get("/v1/partner/whoami", HTTP_X_REQUEST_ID="req-123.abc")
    assert echoed["X-Request-Id"] == "req-123.abc"
    minted = partner.get("/v1/partner/whoami", HTTP_X_REQUEST_ID="bad id with spaces")
    assert minted["X-Request-Id"] != "bad id with spaces" and len(minted["X-Request-Id"]) == 32


def test_whoami_describes_the_caller(partner):
    body = partner.get("/v1/partner/whoami").json()
    assert body["tenant"] == {"slug": "acme", "name": "Acme Prop"}
    assert body["api_key"]["prefix"] == f"pk_{partner.api_key.prefix}"
    assert body["api_key"]["scopes"] == sorted(["users:write", "accounts:write", "accounts:read"])
    assert body["rate_limits"] == {"per_second": 50, "per_minute": 3000}


def test_every_response_carries_rate_limit_headers(partner):
    for response in (partner.get("/v1/partner/whoami"), partner.get("/v1/partner/accounts/x")):
        for header in (
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
            "X-RateLimit-Limit-Per-Second",
            "X-RateLimit-Remaining-Per-Second",
        ):
            assert response.has_header(header), header
    assert partner.get("/v1/partner/whoami")["X-RateLimit-Limit"] == "3000"


def test_rate_limit_exceeded_is_429_with_retry_after(tenant):
    tenant.rate_limit_per_second = 3
    tenant.save()
    client = make_partner_client(tenant)
    statuses = [client.get("/v1/partner/whoami").status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]  # denied requests are not counted either
    response = client.get("/v1/partner/whoami")
    body = assert_error(response, 429, "RATE_LIMIT_EXCEEDED")
    assert set(body) == {"error", "message"}
    assert int(response["Retry-After"]) >= 1
    assert response["X-RateLimit-Remaining-Per-Second"] == "0"


def _boom(request):
    raise RuntimeError("kaboom")


urlpatterns = [path("v1/partner/boom", _boom)]


def test_unhandled_error_is_500_envelope_without_traceback(settings, client):
    from django.urls import clear_url_caches

    settings.ROOT_URLCONF = __name__
    settings.DEBUG = True  # even in DEBUG no HTML error page reaches a partner
    clear_url_caches()
    client.raise_request_exception = False
    response = client.get("/v1/partner/boom")
    body = assert_error(response, 500, "INTERNAL_ERROR")
    assert "kaboom" not in response.content.decode()
    assert "Traceback" not in response.content.decode()
    assert set(body) == {"error", "message"}
