"""POST/GET /v1/partner/users and the login-link endpoint."""

from __future__ import annotations

import pytest
from django.core import mail

from accounts.models import EmailOutbox, LoginToken, User
from partners.models import TenantUser
from partners.services import tenant_allow_redirect
from tests.factories import UserFactory
from tests.partners.test_api_auth import assert_error

pytestmark = pytest.mark.django_db


def register(client, external_id="ext-1", email="Alice@Example.com ", **extra):
    return client.post(
        "/v1/partner/users", {"external_id": external_id, "email": email, **extra}, format="json"
    )


def test_first_registration_is_201_with_the_mapping(partner, tenant):
    response = register(partner, metadata={"plan": "gold"})
    assert response.status_code == 201
    body = response.json()
    user = User.objects.get()
    assert body["user_id"] == user.id
    assert body["email"] == "alice@example.com" == user.email
    assert body["external_id"] == "ext-1"
    assert body["metadata"] == {"plan": "gold"}
    assert body["created"] is True
    assert body["created_at"].endswith("Z")
    assert TenantUser.objects.get(tenant=tenant).pk.hex == body["tenant_user_id"].replace("-", "")


def test_replay_is_200_same_body_and_never_changes_metadata(partner):
    first = register(partner, metadata={"plan": "gold"}).json()
    replay = register(partner, email="alice@example.com", metadata={"plan": "changed"})
    assert replay.status_code == 200
    body = replay.json()
    assert body["created"] is False
    assert body["metadata"] == {"plan": "gold"}
    assert {k: v for k, v in body.items() if k != "created"} == {
        k: v for k, v in first.items() if k != "created"
    }


def test_same_external_id_other_email_is_409_external_id_conflict(partner):
    register(partner)
    assert_error(register(partner, email="bob@example.com"), 409, "EXTERNAL_ID_CONFLICT")


def test_email_mapped_under_another_external_id_is_409(partner):
    register(partner)
    assert_error(register(partner, external_id="ext-2"), 409, "EMAIL_ALREADY_MAPPED")
    assert TenantUser.objects.count() == 1


def test_existing_native_user_is_linked_without_any_signal(partner, other_partner):
    # A retail user and another tenant's trader exist with these emails already.
    UserFactory(email="retail@example.com")
    register(other_partner, external_id="theirs", email="shared@example.com")
    fresh = register(partner, external_id="a", email="new@example.com")
    linked_retail = register(partner, external_id="b", email="retail@example.com")
    linked_other = register(partner, external_id="c", email="shared@example.com")
    for response in (fresh, linked_retail, linked_other):
        assert response.status_code == 201
        assert response.json()["created"] is True
        assert set(response.json()) == set(fresh.json())
    assert User.objects.count() == 3  # one user per email across the platform
    assert linked_retail.json()["user_id"] == User.objects.get(email="retail@example.com").id


@pytest.mark.parametrize(
    "body,field",
    [
        ({"email": "a@example.com"}, "external_id"),
        ({"external_id": "x"}, "email"),
        ({"external_id": "", "email": "a@example.com"}, "external_id"),
        ({"external_id": "   ", "email": "a@example.com"}, "external_id"),
        ({"external_id": "x" * 256, "email": "a@example.com"}, "external_id"),
        ({"external_id": "x\n", "email": "a@example.com"}, "external_id"),
        ({"external_id": 12, "email": "a@example.com"}, "external_id"),
        ({"external_id": "x", "email": "not-an-email"}, "email"),
        ({"external_id": "x", "email": "a@" + "b" * 320 + ".com"}, "email"),
        ({"external_id": "x", "email": "a@example.com", "metadata": [1]}, "metadata"),
        (
            {"external_id": "x", "email": "a@example.com", "metadata": {"k": "v" * 17000}},
            "metadata",
        ),
        ({"external_id": "x", "email": "a@example.com", "metdata": {}}, "metdata"),
    ],
)
def test_invalid_registration_is_422_naming_the_field(partner, body, field):
    response = partner.post("/v1/partner/users", body, format="json")
    assert_error(response, 422, "VALIDATION_FAILED")
    assert field in response.json()["details"]
    assert User.objects.count() == 0


def test_body_must_be_an_object(partner):
    response = partner.post("/v1/partner/users", [1, 2], format="json")
    assert_error(response, 422, "VALIDATION_FAILED")


def test_get_user_shows_mapping_and_this_tenants_accounts_only(partner, other_partner):
    user_id = register(partner).json()["user_id"]
    register(other_partner, external_id="x", email="alice@example.com")
    partner.post(
        "/v1/partner/accounts",
        {
            "user_id": user_id,
            "external_id": "acc-1",
            "stage": "challenge",
            "starting_balance": "5000",
        },
        format="json",
    )
    other_partner.post(
        "/v1/partner/accounts",
        {"user_id": user_id, "external_id": "theirs", "stage": "funded", "starting_balance": "100"},
        format="json",
    )
    body = partner.get(f"/v1/partner/users/{user_id}").json()
    assert body["external_id"] == "ext-1"
    assert [a["external_id"] for a in body["accounts"]] == ["acc-1"]
    assert body["accounts"][0]["stage"] == "challenge"
    assert body["accounts"][0]["status"] == "active"


def test_get_unmapped_or_malformed_user_is_404(partner, other_partner):
    theirs = register(other_partner, external_id="t", email="t@example.com").json()["user_id"]
    retail = UserFactory(email="retail@example.com").id
    for user_id in (theirs, retail, 999999, "abc", "-1", "1.5", "99999999999999999999999"):
        assert_error(partner.get(f"/v1/partner/users/{user_id}"), 404, "NOT_FOUND")


def test_user_list_is_keyset_paginated_and_filterable(partner, other_partner):
    for i in range(5):
        register(partner, external_id=f"e{i}", email=f"u{i}@example.com")
    register(other_partner, external_id="other", email="o@example.com")
    seen = []
    cursor = None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = partner.get("/v1/partner/users" + query).json()
        seen += [item["external_id"] for item in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert seen == ["e0", "e1", "e2", "e3", "e4"]
    filtered = partner.get("/v1/partner/users?external_id=e3").json()["data"]
    assert [u["external_id"] for u in filtered] == ["e3"]


def test_cursor_from_another_list_or_garbled_is_400(partner, other_partner):
    for i in range(3):
        register(partner, external_id=f"e{i}", email=f"u{i}@example.com")
        register(other_partner, external_id=f"e{i}", email=f"u{i}@example.com")
    theirs = other_partner.get("/v1/partner/users?limit=1").json()["next_cursor"]
    assert_error(partner.get(f"/v1/partner/users?cursor={theirs}"), 400, "INVALID_CURSOR")
    assert_error(partner.get("/v1/partner/users?cursor=garbage"), 400, "INVALID_CURSOR")
    accounts_cursor = partner.get("/v1/partner/users?limit=1").json()["next_cursor"]
    assert_error(
        partner.get(f"/v1/partner/accounts?cursor={accounts_cursor}"), 400, "INVALID_CURSOR"
    )


@pytest.mark.parametrize("limit", ["0", "501", "abc", "-5"])
def test_bad_limit_is_422(partner, limit):
    assert_error(partner.get(f"/v1/partner/users?limit={limit}"), 422, "VALIDATION_FAILED")


# --- login link ------------------------------------------------------------------------------
def test_login_link_is_202_queues_and_sends_an_email_without_the_link_in_the_response(
    partner, django_capture_on_commit_callbacks
):
    user_id = register(partner).json()["user_id"]
    with django_capture_on_commit_callbacks(execute=True):
        response = partner.post(f"/v1/partner/users/{user_id}/login-link", {}, format="json")
    assert response.status_code == 202
    assert response.json() == {"status": "accepted"}
    assert "login/t/" not in response.content.decode()
    assert EmailOutbox.objects.get().status == EmailOutbox.Status.SENT
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["alice@example.com"]
    assert "/login/t/" in mail.outbox[0].body


def test_login_link_with_empty_body_is_accepted(partner):
    user_id = register(partner).json()["user_id"]
    response = partner.post(f"/v1/partner/users/{user_id}/login-link")
    assert response.status_code == 202


def test_login_link_redirect_must_be_allowlisted(partner, tenant):
    user_id = register(partner).json()["user_id"]
    response = partner.post(
        f"/v1/partner/users/{user_id}/login-link",
        {"redirect_url": "https://evil.example/steal"},
        format="json",
    )
    assert_error(response, 422, "REDIRECT_NOT_ALLOWED")
    assert LoginToken.objects.count() == 0
    tenant_allow_redirect(tenant=tenant, origin="https://firm.example")
    ok = partner.post(
        f"/v1/partner/users/{user_id}/login-link",
        {"redirect_url": "https://firm.example/dashboard"},
        format="json",
    )
    assert ok.status_code == 202
    assert LoginToken.objects.get().redirect_url == "https://firm.example/dashboard"


def test_sixth_login_link_in_an_hour_is_429(partner, django_capture_on_commit_callbacks):
    user_id = register(partner).json()["user_id"]
    url = f"/v1/partner/users/{user_id}/login-link"
    with django_capture_on_commit_callbacks(execute=True):
        assert [partner.post(url).status_code for _ in range(5)] == [202] * 5
    response = partner.post(url)
    assert_error(response, 429, "LOGIN_LINK_THROTTLED")
    assert int(response["Retry-After"]) >= 1
    assert len(mail.outbox) == 5


def test_login_link_for_foreign_user_is_404_before_body_validation(partner, other_partner):
    theirs = register(other_partner, external_id="t", email="t@example.com").json()["user_id"]
    response = partner.post(
        f"/v1/partner/users/{theirs}/login-link", {"redirect_url": 5}, format="json"
    )
    assert_error(response, 404, "NOT_FOUND")
    assert len(mail.outbox) == 0


def test_new_and_existing_emails_run_the_same_statements(partner, other_partner):
    """No enumeration signal in the work done either: registering an email nobody has and
    one that already belongs to a user elsewhere sends the same SQL, statement for statement
    (so timing cannot tell them apart beyond noise)."""
    import re

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    UserFactory(email="known@example.com")
    partner.get("/v1/partner/whoami")  # key cached, last use recorded: not part of the shape

    def shape(external_id, email):
        with CaptureQueriesContext(connection) as ctx:
            assert register(partner, external_id=external_id, email=email).status_code == 201
        return [
            re.sub(r'"s\d+_x\d+"', "SP", q["sql"].split(" WHERE")[0].split(" VALUES")[0])
            for q in ctx.captured_queries
        ]

    fresh = shape("n-1", "nobody@example.com")
    known = shape("n-2", "known@example.com")
    assert fresh == known
    assert len(fresh) <= 9
