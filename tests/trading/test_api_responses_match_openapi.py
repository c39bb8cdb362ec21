"""Real responses of both APIs against their generated OpenAPI documents: every status an
operation answers is documented for it, and every JSON body validates against the documented
schema, strictly (no undocumented field, null only where declared nullable, every required
field present). The documents are OpenAPI 3.0; `nullable` is turned into JSON Schema's null
type and objects are closed before jsonschema checks them."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from rest_framework.test import APIClient

from accounts.models import User
from tests.factories import trader_client
from tests.trading.conftest import make_market, publish_book

pytestmark = pytest.mark.django_db

ASKS = [("0.50", "100"), ("0.52", "200")]
BIDS = [("0.48", "100"), ("0.45", "200")]


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema objects → JSON Schema: nullable → null allowed, objects closed."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _json_schema(value) for key, value in node.items()}
    if node.get("type") == "object" and "properties" in node:
        node.setdefault("additionalProperties", False)
    if node.pop("nullable", False):
        if "enum" in node and None not in node["enum"]:
            node["enum"] = [*node["enum"], None]
        if "type" in node:
            node["type"] = [node["type"], "null"]
        else:
            node = {"anyOf": [node, {"type": "null"}]}
    return node


class Documented:
    """One API's document, and a check of a response against it."""

    def __init__(self, url: str, prefix: str) -> None:
        response = APIClient().get(url)
        assert response.status_code == 200
        self.doc = response.json()
        self.components = _json_schema(copy.deepcopy(self.doc["components"]))
        self.prefix = prefix
        self.checked: set[tuple[str, str, str]] = set()

    def check(self, method: str, template: str, response: Any) -> Any:
        operation = self.doc["paths"][self.prefix + template][method]
        status = str(response.status_code)
        assert status in operation["responses"], (
            f"{method.upper()} {template} answered {status}, undocumented: {response.content!r}"
        )
        self.checked.add((method, template, status))
        content = operation["responses"][status].get("content")
        if content is None:
            return None
        body = response.json()
        schema = {**_json_schema(content["application/json"]["schema"])}
        schema["components"] = self.components
        errors = sorted(Draft202012Validator(schema).iter_errors(body), key=lambda e: list(e.path))
        assert not errors, f"{method.upper()} {template} {status}: " + "; ".join(
            f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5]
        )
        return body


@pytest.fixture
def partner_doc():
    return Documented("/v1/partner/openapi.json", "/v1/partner")


@pytest.fixture
def trader_doc():
    return Documented("/v1/openapi.json", "/v1")


def test_partner_responses_match_the_document(partner, partner_doc):
    check = partner_doc.check
    market, yes, _ = make_market()
    publish_book(yes.token_id, bids=BIDS, asks=ASKS, market=market.condition_id)

    user = check(
        "post",
        "/users",
        partner.post(
            "/v1/partner/users",
            {"external_id": "c-1", "email": "c1@example.com", "metadata": {"plan": "50k"}},
            format="json",
        ),
    )
    user_id = user["user_id"]
    check("get", "/users", partner.get("/v1/partner/users?limit=1"))
    check("get", "/users", partner.get("/v1/partner/users?cursor=not-a-cursor"))
    check("get", "/users", partner.get("/v1/partner/users?limit=0"))
    body = {"user_id": user_id, "external_id": "a-1", "stage": "challenge"}
    fresh = check(
        "post",
        "/accounts",
        partner.post("/v1/partner/accounts", {**body, "starting_balance": "5000"}, format="json"),
    )
    assert fresh["closed_at"] is None and fresh["last_reset_at"] is None
    assert fresh["prices_as_of"] is None
    account_id = fresh["account_id"]
    check("post", "/accounts", partner.post("/v1/partner/accounts", {}, format="json"))
    check("get", "/users/{user_id}", partner.get(f"/v1/partner/users/{user_id}"))

    # A trade through the trader API, as the account's owner.
    trader = trader_client(User.objects.get(pk=user_id))
    placed = trader.post(
        "/v1/orders",
        {"account_id": account_id, "token_id": yes.token_id, "side": "BUY", "type": "market",
         "amount": "20"},
        format="json",
    )  # fmt: skip
    assert placed.status_code == 201, placed.content

    held = check("get", "/accounts/{account_id}", partner.get(f"/v1/partner/accounts/{account_id}"))
    assert held["positions"] and held["prices_as_of"] is not None
    check("get", "/accounts/{account_id}", partner.get("/v1/partner/accounts/nope"))
    check("get", "/accounts", partner.get("/v1/partner/accounts"))
    check("get", "/accounts", partner.get("/v1/partner/accounts?stage=nope"))
    trades = f"/v1/partner/accounts/{account_id}/trades"
    check("get", "/accounts/{account_id}/trades", partner.get(trades))
    check("get", "/accounts/{account_id}/trades", partner.get(trades + "?cursor=bogus"))
    check("get", "/accounts/{account_id}/trades", partner.get(trades + "?since=yesterday"))
    equity = f"/v1/partner/accounts/{account_id}/equity"
    check("get", "/accounts/{account_id}/equity", partner.get(equity))
    check("get", "/accounts/{account_id}/equity", partner.get(equity + "?interval=2h"))
    check(
        "patch",
        "/accounts/{account_id}",
        partner.patch(f"/v1/partner/accounts/{account_id}", {"rules": {"x": "1"}}, format="json"),
    )
    reset = check(
        "post",
        "/accounts/{account_id}/reset",
        partner.post(f"/v1/partner/accounts/{account_id}/reset"),
    )
    assert reset["last_reset_at"] is not None
    closed = check(
        "post",
        "/accounts/{account_id}/close",
        partner.post(f"/v1/partner/accounts/{account_id}/close"),
    )
    assert closed["closed_at"] is not None
    check(
        "post",
        "/accounts/{account_id}/reset",
        partner.post(f"/v1/partner/accounts/{account_id}/reset"),
    )  # 409 ACCOUNT_CLOSED
    check("get", "/whoami", partner.get("/v1/partner/whoami"))
    check("get", "/whoami", APIClient().get("/v1/partner/whoami"))  # 401


def test_trader_responses_match_the_document(trader_doc):
    check = trader_doc.check
    from tests.factories import UserFactory
    from tests.factories import personal_account as personal

    market, yes, _ = make_market()
    publish_book(yes.token_id, bids=BIDS, asks=ASKS, market=market.condition_id)
    ana = UserFactory(email="ana@example.com")
    account = personal(ana)
    client = trader_client(ana)

    taker = {"account_id": str(account.pk), "token_id": yes.token_id, "side": "BUY"}
    filled = check(
        "post",
        "/orders",
        client.post("/v1/orders", {**taker, "type": "market", "amount": "20"}, format="json"),
    )
    assert filled["fills"]
    resting = check(
        "post",
        "/orders",
        client.post(
            "/v1/orders",
            {**taker, "type": "limit", "price": "0.40", "size": "10", "time_in_force": "GTD",
             "expiration": 4_000_000_000},
            format="json",
        ),
    )  # fmt: skip
    check("post", "/orders", client.post("/v1/orders", {**taker, "side": "buy"}, format="json"))
    check("get", "/orders", client.get(f"/v1/orders?account_id={account.pk}"))
    check("get", "/orders", client.get(f"/v1/orders?account_id={account.pk}&cursor=x"))
    check("get", "/orders", client.get("/v1/orders"))  # 422: account_id is required
    check("get", "/orders/{order_id}", client.get(f"/v1/orders/{filled['id']}"))
    check("delete", "/orders/{order_id}", client.delete(f"/v1/orders/{resting['id']}"))
    check("delete", "/orders", client.delete(f"/v1/orders?account_id={account.pk}"))
    check("get", "/accounts", client.get("/v1/accounts"))
    check("get", "/accounts/{account_id}", client.get(f"/v1/accounts/{account.pk}"))
    check("get", "/trades", client.get(f"/v1/trades?account_id={account.pk}"))
    check("get", "/trades", client.get(f"/v1/trades?account_id={account.pk}&limit=501"))
    check("get", "/markets", client.get("/v1/markets"))
    check("get", "/markets", client.get("/v1/markets?sort=nope"))
    check("get", "/markets/{condition_id}", client.get(f"/v1/markets/{market.condition_id}"))
    check("get", "/book", client.get(f"/v1/book?token_id={yes.token_id}"))
    check("get", "/book", client.get("/v1/book"))
    check("get", "/accounts", APIClient().get("/v1/accounts"))  # 401
