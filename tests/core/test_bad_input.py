"""Bad input never reaches the ORM or the engine as a 500 (issue #13 items 1 and 2): a NUL in a
path or query string, and JSON bodies PostgreSQL or Python cannot hold, get a clear error in
the envelope (pages: a plain 400)."""

from __future__ import annotations

import pytest

from tests.factories import UserFactory, make_partner_client
from tests.factories import personal_account as personal
from tests.factories import trader_client as client_for
from tests.trading.conftest import make_market

pytestmark = pytest.mark.django_db

# Every request the held-out sweep found answering 500 with a NUL in its query string.
PARTNER_QUERIES = ["/v1/partner/accounts?external_id=%00", "/v1/partner/users?external_id=%00"]
TRADER_QUERIES = [
    "/v1/markets?q=%00",
    "/v1/markets?category=%00",
    "/v1/book?token_id=%00",
    "/v1/prices-history?token_id=%00",
    "/v1/orders?market=%00",
    "/v1/orders?token_id=%00",
]
PAGES = ["/markets/?q=%00", "/markets/?category=a%00b", "/portfolio/?account=%00", "/markets/%00/"]

BAD_JSON = {
    "a NUL in a string": b'{"email": "a\\u0000@example.com", "external_id": "x"}',
    "a NUL in a key": b'{"email\\u0000": "a@example.com"}',
    "a lone surrogate": b'{"email": "\\ud800@example.com", "external_id": "x"}',
    "a number beyond a double": b'{"starting_balance": 1e999, "external_id": "x"}',
    "NaN": b'{"starting_balance": NaN}',
    "deep nesting": b'{"metadata": ' + b'{"a": ' * 2000 + b"1" + b"}" * 2000 + b"}",
}


@pytest.fixture
def partner(tenant):
    return make_partner_client(tenant)


@pytest.fixture
def trader():
    user = UserFactory()
    personal(user, "1000")
    return client_for(user)


def _envelope(response, status, code):
    assert response.status_code == status, (response.status_code, response.content[:300])
    body = response.json()
    assert body["error"] == code, body
    return body


@pytest.mark.parametrize("url", PARTNER_QUERIES)
def test_a_nul_in_a_partner_query_is_422(partner, url):
    body = _envelope(partner.get(url), 422, "VALIDATION_FAILED")
    assert body["details"] == {"external_id": ["must not contain NUL characters"]}


@pytest.mark.parametrize("url", TRADER_QUERIES)
def test_a_nul_in_a_trader_query_is_422(trader, url):
    _envelope(trader.get(url), 422, "VALIDATION_FAILED")


def test_a_nul_in_a_delete_query_and_in_an_api_path(trader):
    _envelope(trader.delete("/v1/orders?market=%00"), 422, "VALIDATION_FAILED")
    _envelope(trader.get("/v1/markets/%00"), 404, "NOT_FOUND")
    make_market()
    assert trader.get("/v1/markets?q=%2500").status_code == 200  # the text "%00" is fine


@pytest.mark.parametrize("url", PAGES)
def test_a_nul_in_a_page_url_is_a_plain_400(client, url):
    client.force_login(UserFactory())
    assert client.get(url).status_code == 400


@pytest.mark.parametrize("body", BAD_JSON.values(), ids=BAD_JSON.keys())
def test_json_bodies_postgres_cannot_hold_are_400_malformed_json(partner, trader, body):
    for client, url, method in (
        (partner, "/v1/partner/users", "post"),
        (partner, "/v1/partner/accounts", "post"),
        (trader, "/v1/orders", "post"),
    ):
        response = getattr(client, method)(url, body, content_type="application/json")
        _envelope(response, 400, "MALFORMED_JSON")


def test_a_patch_with_bad_json_is_400_and_changes_nothing(partner, tenant):
    user = partner.post(
        "/v1/partner/users", {"external_id": "u1", "email": "u1@example.com"}, format="json"
    ).json()
    account = partner.post(
        "/v1/partner/accounts",
        {"user_id": user["user_id"], "external_id": "a1", "stage": "challenge",
         "starting_balance": "100.00"},
        format="json",
    ).json()  # fmt: skip
    url = f"/v1/partner/accounts/{account['account_id']}"
    response = partner.patch(
        url, b'{"metadata": {"k": "\\u0000"}}', content_type="application/json"
    )
    _envelope(response, 400, "MALFORMED_JSON")
    assert partner.get(url).json()["metadata"] == {}


@pytest.mark.parametrize(
    "query",
    [
        "since=0000-01-01T00:00:00Z",
        "since=2026-13-01T00:00:00Z",
        "since=9999-12-31T23:59:59-14:00",
    ],
)
def test_impossible_or_extreme_trades_times_are_422(partner, query):
    account = _partner_account(partner)
    response = partner.get(f"/v1/partner/accounts/{account}/trades?{query}")
    body = _envelope(response, 422, "VALIDATION_FAILED")
    assert "since" in body["details"]


@pytest.mark.parametrize(
    "query",
    [
        "from=0001-01-01T00:00:00%2B14:00",
        "to=9999-12-31T23:59:59-14:00",
        "from=0001-01-02T00:00:00Z",
    ],
)
def test_extreme_equity_ranges_are_422(partner, query):
    account = _partner_account(partner)
    response = partner.get(f"/v1/partner/accounts/{account}/equity?{query}")
    _envelope(response, 422, "VALIDATION_FAILED")


def _partner_account(partner) -> str:
    user = partner.post(
        "/v1/partner/users", {"external_id": "d1", "email": "d1@example.com"}, format="json"
    ).json()
    return str(
        partner.post(
            "/v1/partner/accounts",
            {"user_id": user["user_id"], "external_id": "d1", "stage": "challenge",
             "starting_balance": "100.00"},
            format="json",
        ).json()["account_id"]
    )  # fmt: skip
