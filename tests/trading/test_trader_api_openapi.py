"""The trader API's OpenAPI document is generated from the code and kept apart from the
partner document."""

from __future__ import annotations

import re

import pytest
from rest_framework.test import APIClient

from core.api.views import TraderApiView
from marketdata import urls as market_urls
from trading import urls as trader_urls
from trading.apis.openapi import TRADER_ERROR_CODES

pytestmark = pytest.mark.django_db


@pytest.fixture
def schema():
    response = APIClient().get("/v1/openapi.json")
    assert response.status_code == 200
    return response.json()


def _as_openapi_path(regex: str) -> str:
    path = regex.lstrip("^").replace("/?$", "").replace("$", "")
    return "/v1/" + re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", path)


def test_every_trader_route_is_documented_and_nothing_else(schema):
    expected = {
        _as_openapi_path(p.pattern.regex.pattern)
        for p in [*market_urls.urlpatterns, *trader_urls.api_patterns]
        if getattr(p.callback, "view_class", None) is not None
        and issubclass(p.callback.view_class, TraderApiView)
    }
    assert expected and set(schema["paths"]) == expected
    assert not any(path.startswith("/v1/partner") for path in schema["paths"])
    assert schema["info"]["title"] == "polysim Trader API"


def test_schema_lists_auth_schemes_and_error_codes(schema):
    schemes = schema["components"]["securitySchemes"]
    assert {"TraderKeyBearer", "TraderKeyHeader", "Session"} <= set(schemes)
    codes = {e["code"] for e in schema["info"]["x-error-codes"]}
    assert codes == {e.code for e in TRADER_ERROR_CODES}
    assert "MISSING_CREDENTIALS" in codes and "CSRF_FAILED" in codes


def test_money_and_prices_are_decimal_strings(schema):
    envelope = schema["components"]["schemas"]["TraderAccountEnvelopeOutput"]["properties"]
    assert envelope["equity"] == {**envelope["equity"], "type": "string", "format": "decimal"}
    quote = schema["components"]["schemas"]["TokenQuoteOutput"]["properties"]
    assert quote["mid"]["type"] == "string"


def test_partner_schema_stays_partner_only():
    paths = APIClient().get("/v1/partner/openapi.json").json()["paths"]
    assert paths and all(path.startswith("/v1/partner/") for path in paths)


def test_reference_page_is_served():
    response = APIClient().get("/v1/docs")
    assert response.status_code == 200
    assert "openapi.json" in response.content.decode()


@pytest.mark.parametrize("url", ["/v1/openapi.json", "/v1/partner/openapi.json"])
def test_every_operation_documents_503_service_unavailable(url):
    """Every operation reads PostgreSQL (authentication at least), so each can answer 503
    SERVICE_UNAVAILABLE with Retry-After while a service is down (docs/operations.md)."""
    document = APIClient().get(url).json()
    assert "Error" in document["components"]["schemas"]
    operations = [
        op
        for item in document["paths"].values()
        for method, op in item.items()
        if method in {"get", "post", "patch", "put", "delete"}
    ]
    assert operations
    for op in operations:
        unavailable = op["responses"]["503"]
        assert "SERVICE_UNAVAILABLE: PostgreSQL or Redis" in unavailable["description"]
        assert "Retry-After" in unavailable["headers"]
    book = document["paths"].get("/v1/book")
    if book is not None:  # its own 503 (MARKET_NOT_READY) is kept, the outage added to it
        assert book["get"]["responses"]["503"]["description"].startswith("MARKET_NOT_READY")
