"""Tenant isolation sweep: every partner route that takes an object id,
called with tenant A's key on tenant B's objects, answers exactly like a missing object —
the same 404 body — and changes nothing. Routes are read from the URLconf, so a new
id-bearing route is swept automatically (or fails here if its id kind is unknown)."""

from __future__ import annotations

import re

import pytest

from accounts.models import Account, EmailOutbox, LedgerEntry, LoginToken
from partners import urls as partner_urls
from partners.models import TenantUser
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

MISSING = {"user_id": "987654321", "account_id": "00000000-0000-4000-8000-000000000000"}
WRITE_BODIES = {
    "POST": {"redirect_url": "/app/"},
    "PATCH": {"rules": {"x": 1}},
}


def _id_routes():
    routes = []
    for pattern in partner_urls.urlpatterns:
        regex = pattern.pattern.regex.pattern
        groups = re.findall(r"\(\?P<(\w+)>", regex)
        if not groups:
            continue
        view_class = pattern.callback.view_class
        methods = [
            m.upper() for m in ("get", "post", "patch", "put", "delete") if hasattr(view_class, m)
        ]
        routes.append((regex, groups, methods))
    return routes


def _url(regex: str, values: dict[str, str]) -> str:
    path = regex.lstrip("^").replace("/?$", "").replace("$", "")
    for name, value in values.items():
        path = re.sub(rf"\(\?P<{name}>[^)]*\)", value, path)
    return "/v1/partner/" + path


def _counts():
    return {
        model.__name__: model.objects.count()
        for model in (Account, LedgerEntry, LoginToken, EmailOutbox, TenantUser)
    }


def test_sweep_covers_every_id_route():
    kinds = {group for _, groups, _ in _id_routes() for group in groups}
    assert kinds <= set(MISSING), f"unknown id kinds in partner routes: {kinds - set(MISSING)}"
    assert len(_id_routes()) >= 6


def test_foreign_objects_are_indistinguishable_from_missing_ones(partner, other_partner):
    theirs = other_partner.post(
        "/v1/partner/users", {"external_id": "b-1", "email": "b1@example.com"}, format="json"
    ).json()
    their_account = other_partner.post(
        "/v1/partner/accounts",
        {
            "user_id": theirs["user_id"],
            "external_id": "b-acc",
            "stage": "funded",
            "starting_balance": "100",
        },
        format="json",
    ).json()
    # A retail user with no mapping in A is also invisible to A.
    retail = UserFactory(email="retail@example.com")
    foreign_ids = [
        {"user_id": str(theirs["user_id"]), "account_id": their_account["account_id"]},
        {"user_id": str(retail.id), "account_id": their_account["account_id"]},
    ]
    before = _counts()
    swept = 0
    for regex, groups, methods in _id_routes():
        for method in methods:
            body = WRITE_BODIES.get(method)
            missing_url = _url(regex, {g: MISSING[g] for g in groups})
            expected = getattr(partner, method.lower())(missing_url, body, format="json")
            assert expected.status_code == 404, (method, missing_url, expected.content)
            for ids in foreign_ids:
                url = _url(regex, {g: ids[g] for g in groups})
                response = getattr(partner, method.lower())(url, body, format="json")
                assert response.status_code == 404, (method, url, response.content)
                assert response.json() == expected.json(), (method, url)
                assert response["X-Error-Code"] == "NOT_FOUND"
                swept += 1
    assert swept >= 14
    assert _counts() == before
    their_state = other_partner.get(f"/v1/partner/accounts/{their_account['account_id']}").json()
    assert (
        their_state["status"] == "active"
        and their_state["epoch"] == 0
        and their_state["rules"] == {}
    )


def test_lists_never_return_other_tenants_rows(partner, other_partner):
    theirs = other_partner.post(
        "/v1/partner/users", {"external_id": "b-1", "email": "b1@example.com"}, format="json"
    ).json()
    other_partner.post(
        "/v1/partner/accounts",
        {
            "user_id": theirs["user_id"],
            "external_id": "b-acc",
            "stage": "funded",
            "starting_balance": "100",
        },
        format="json",
    )
    assert partner.get("/v1/partner/users").json()["data"] == []
    assert partner.get("/v1/partner/accounts").json()["data"] == []
    assert partner.get(f"/v1/partner/accounts?user_id={theirs['user_id']}").json()["data"] == []
    assert partner.get("/v1/partner/accounts?external_id=b-acc").json()["data"] == []
    assert partner.get("/v1/partner/users?external_id=b-1").json()["data"] == []
