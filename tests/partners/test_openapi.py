"""The OpenAPI document and the browsable reference are generated from the code."""

from __future__ import annotations

import re

import pytest
from rest_framework.test import APIClient

from core.errors import PARTNER_ERROR_CODES
from partners import urls as partner_urls

pytestmark = pytest.mark.django_db


@pytest.fixture
def schema():
    response = APIClient().get("/v1/partner/openapi.json")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/")
    return response.json()


def _as_openapi_path(regex: str) -> str:
    path = regex.lstrip("^").replace("/?$", "").replace("$", "")
    return "/v1/partner/" + re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", path)


def test_every_partner_route_is_documented(schema):
    documented = set(schema["paths"])
    for pattern in partner_urls.urlpatterns:
        if (
            not hasattr(pattern.callback, "view_class")
            or "openapi" in pattern.pattern.regex.pattern
        ):
            continue
        view = pattern.callback.view_class
        if view.__module__ != "partners.apis":
            continue
        path = _as_openapi_path(pattern.pattern.regex.pattern)
        assert path in documented, path
        for method in view.scopes:
            assert method.lower() in schema["paths"][path], (path, method)


def test_schema_names_the_error_codes_and_the_key_header(schema):
    text = str(schema)
    assert "X-API-Key" in text or "ApiKey" in text
    for error in PARTNER_ERROR_CODES:
        if error.code in ("SERVICE_UNAVAILABLE", "INTERNAL_ERROR"):
            continue
        assert error.code in text, error.code


def test_money_fields_are_decimal_strings(schema):
    envelope = schema["components"]["schemas"]["AccountEnvelopeOutput"]["properties"]
    assert envelope["equity"]["type"] == "string"
    assert envelope["equity"]["format"] == "decimal"


def test_reference_page_is_served_without_a_cdn():
    response = APIClient().get("/v1/partner/docs")
    assert response.status_code == 200
    html = response.content.decode()
    assert "openapi.json" in html
    assert "cdn." not in html and "unpkg" not in html and "jsdelivr" not in html
