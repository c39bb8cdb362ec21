"""A trader's accounts, envelopes and fills on /v1/*: only their own, ever; and the access
helpers the order endpoints use (trading.permissions)."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.models import Account, User
from accounts.services.wallets import account_open
from core import errors
from partners.services import tenant_set_enabled
from tests.factories import TenantFactory, UserFactory
from tests.factories import personal_account as personal
from tests.factories import trader_client as client_for
from trading.models import Fill
from trading.permissions import account_for_trader, ensure_account_tradable
from trading.services import account_close
from trading.wire import AccountEnvelopeOutput

pytestmark = pytest.mark.django_db


def managed(user: User, tenant, external_id: str = "acc-1") -> Account:
    return account_open(
        owner=user,
        tenant=tenant,
        external_id=external_id,
        stage="challenge",
        starting_balance=Decimal("25000"),
    )


def fill(account: Account, seq: int) -> Fill:
    return Fill.objects.create(
        account=account, seq=seq, epoch=0, token_id="tok", market_id="0xm",
        market_question="Will it?", outcome="Yes", side="BUY", price=Decimal("0.5"),
        size=Decimal("10"), notional=Decimal("5"), liquidity="taker", price_source="book",
        trigger_key=f"test:{account.pk}:{seq}", filled_at=timezone.now(),
    )  # fmt: skip


@pytest.fixture
def ana():
    return UserFactory(email="ana@example.com")


@pytest.fixture
def bo():
    return UserFactory(email="bo@example.com")


def test_accounts_lists_personal_and_managed_accounts_of_the_caller_only(ana, bo, tenant):
    mine = personal(ana)
    firm = managed(ana, tenant)
    personal(bo)
    managed(bo, tenant, external_id="bo-1")

    body = client_for(ana).get("/v1/accounts").json()

    rows = {row["account_id"]: row for row in body["data"]}
    assert set(rows) == {str(mine.pk), str(firm.pk)}
    assert rows[str(mine.pk)]["kind"] == "personal"
    assert rows[str(mine.pk)]["managed_by"] is None
    assert rows[str(mine.pk)]["balance"] == "1000.00"
    assert rows[str(mine.pk)]["equity"] == "1000.00"
    assert rows[str(firm.pk)]["kind"] == "tenant"
    assert rows[str(firm.pk)]["managed_by"] == "Acme Prop"
    assert rows[str(firm.pk)]["stage"] == "challenge"
    assert rows[str(firm.pk)]["external_id"] == "acc-1"
    assert rows[str(firm.pk)]["available_balance"] == "25000.00"
    assert rows[str(firm.pk)]["trading_enabled"] is True


def test_accounts_list_flags_closed_and_frozen_accounts(ana, tenant):
    closed = personal(ana)
    account_close(account=closed)
    frozen = managed(ana, tenant)
    tenant_set_enabled(tenant=tenant, enabled=False)

    rows = {r["account_id"]: r for r in client_for(ana).get("/v1/accounts").json()["data"]}

    assert rows[str(closed.pk)]["status"] == "closed"
    assert rows[str(closed.pk)]["trading_enabled"] is False
    assert rows[str(frozen.pk)]["trading_enabled"] is False


def test_account_detail_is_the_partner_envelope(ana, tenant, partner):
    firm = managed(ana, tenant)

    response = client_for(ana).get(f"/v1/accounts/{firm.pk}")

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == set(AccountEnvelopeOutput().fields)
    assert body["account_id"] == str(firm.pk)
    assert body["equity"] == "25000.00"
    partner_body = partner.get(f"/v1/partner/accounts/{firm.pk}").json()
    for volatile in ("as_of",):
        body.pop(volatile)
        partner_body.pop(volatile)
    assert body == partner_body


def test_personal_account_detail(ana):
    mine = personal(ana, "500")
    body = client_for(ana).get(f"/v1/accounts/{mine.pk}/").json()
    assert body["balance"] == "500.00" and body["external_id"] is None


def test_someone_elses_account_is_404_exactly_like_a_missing_one(ana, bo, tenant):
    theirs = managed(bo, tenant)
    client = client_for(ana)

    foreign = client.get(f"/v1/accounts/{theirs.pk}")
    missing = client.get(f"/v1/accounts/{uuid.uuid4()}")
    malformed = client.get("/v1/accounts/not-a-uuid")

    for response in (foreign, missing, malformed):
        assert response.status_code == 404
        assert response.json() == {"error": "NOT_FOUND", "message": "Not found."}


def test_trades_are_the_callers_fills_paged_by_seq(ana):
    mine = personal(ana)
    for seq in range(1, 6):
        fill(mine, seq)
    client = client_for(ana)

    first = client.get(f"/v1/trades?account_id={mine.pk}&limit=3").json()
    second = client.get(
        f"/v1/trades?account_id={mine.pk}&limit=3&cursor={first['next_cursor']}"
    ).json()
    idle = client.get(
        f"/v1/trades?account_id={mine.pk}&limit=3&cursor={second['next_cursor']}"
    ).json()

    assert len(first["data"]) == 3 and first["has_more"] is True
    assert len(second["data"]) == 2 and second["has_more"] is False
    assert idle["data"] == [] and idle["next_cursor"] == second["next_cursor"]
    ids = [t["trade_id"] for t in first["data"] + second["data"]]
    assert len(set(ids)) == 5
    assert first["data"][0]["price"] == "0.5" and first["data"][0]["notional"] == "5.00"


def test_trades_of_someone_elses_account_are_404_and_never_listed(ana, bo):
    theirs = personal(bo)
    fill(theirs, 1)
    mine = personal(ana)
    client = client_for(ana)

    response = client.get(f"/v1/trades?account_id={theirs.pk}")
    assert response.status_code == 404 and response.json()["error"] == "NOT_FOUND"
    assert client.get(f"/v1/trades?account_id={mine.pk}").json()["data"] == []


def test_trades_cursor_of_another_account_is_invalid(ana):
    a = personal(ana)
    tenant = TenantFactory(slug="other")
    b = managed(ana, tenant)
    for seq in (1, 2):
        fill(a, seq)
    client = client_for(ana)
    cursor = client.get(f"/v1/trades?account_id={a.pk}&limit=1").json()["next_cursor"]
    response = client.get(f"/v1/trades?account_id={b.pk}&cursor={cursor}")
    assert response.status_code == 400 and response.json()["error"] == "INVALID_CURSOR"


def test_trades_needs_an_account_id(ana):
    response = client_for(ana).get("/v1/trades")
    assert response.status_code == 422
    assert response.json()["details"] == {"account_id": ["This parameter is required."]}


# --- trading.permissions --------------------------------------------------------------------
def test_account_for_trader_returns_own_account_and_hides_others(ana, bo):
    mine, theirs = personal(ana), personal(bo)
    assert account_for_trader(user=ana, account_id=str(mine.pk)) == mine
    for account_id in (theirs.pk, uuid.uuid4(), "garbage", None):
        with pytest.raises(errors.NotFound):
            account_for_trader(user=ana, account_id=account_id)


def test_account_for_trader_loads_every_field_and_the_tenant_as_the_orm(
    ana, tenant, django_assert_num_queries
):
    """Its fixed SQL yields the same values as the ORM's select_related, every field, and
    the tenant needs no second query."""
    opened = account_open(
        owner=ana,
        tenant=tenant,
        external_id="ext-fields",
        stage="challenge",
        starting_balance=Decimal("1234.5"),
        rules={"max_dd": "0.1", "nested": [1, {"a": None}]},
        metadata={"note": "100% sure"},
    )
    Account.objects.filter(pk=opened.pk).update(
        last_trading_day=timezone.now().date(), max_drawdown_pct=Decimal("12.3456")
    )
    expected = Account.objects.select_related("tenant").get(pk=opened.pk)
    with django_assert_num_queries(1):
        got = account_for_trader(user=ana, account_id=opened.pk)
        got_tenant = got.tenant
    for f in Account._meta.concrete_fields:
        assert getattr(got, f.attname) == getattr(expected, f.attname), f.name
    for f in type(tenant)._meta.concrete_fields:
        assert getattr(got_tenant, f.attname) == getattr(expected.tenant, f.attname), f.name
    mine = personal(ana)
    with django_assert_num_queries(1):
        assert account_for_trader(user=ana, account_id=mine.pk).tenant is None


def test_account_for_trader_can_lock_the_row(ana):
    from django.db import transaction

    mine = personal(ana)
    with transaction.atomic():
        assert account_for_trader(user=ana, account_id=mine.pk, for_update=True) == mine


def test_ensure_account_tradable_refuses_closed_and_frozen_accounts(ana, tenant):
    mine = personal(ana)
    ensure_account_tradable(mine)
    account_close(account=mine)
    mine.refresh_from_db()
    with pytest.raises(errors.AccountClosed):
        ensure_account_tradable(mine)

    firm = managed(ana, tenant)
    ensure_account_tradable(account_for_trader(user=ana, account_id=firm.pk))
    tenant_set_enabled(tenant=tenant, enabled=False)
    with pytest.raises(errors.TenantDisabled) as caught:
        ensure_account_tradable(account_for_trader(user=ana, account_id=firm.pk))
    assert caught.value.code == "TENANT_DISABLED"
