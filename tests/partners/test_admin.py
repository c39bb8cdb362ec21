"""The operator admin: every page renders, keys are minted/rotated/revoked through the
services with the full key shown exactly once, the secret hash never appears, and money is
read-only."""

from __future__ import annotations

import re
import uuid
from decimal import Decimal

import pytest
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse

from accounts.models import Account, EmailOutbox, LedgerEntry, User
from core.errors import InvalidApiKey
from partners import keys
from partners.models import ALL_SCOPES, ApiKey, Tenant, TenantUser
from partners.services import apikey_create, partner_account_open, trader_register
from trading.models import Fill, Order

pytestmark = pytest.mark.django_db

RAW_KEY_RE = re.compile(r"pk_[a-z0-9]{8}_[A-Za-z0-9_-]{40,}")


def url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def operator(client, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed only
    user = User.objects.create_superuser("ops@example.com")  # force_login needs no password
    client.force_login(user)
    return client


@pytest.fixture
def world(tenant):
    """One row of every model the admin shows."""
    issued = apikey_create(tenant=tenant, name="prod")
    mapping, _ = trader_register(
        tenant=tenant, external_id="trader-1", email="trader1@example.com", metadata={}
    )
    account, _ = partner_account_open(
        tenant=tenant,
        user_id=mapping.user_id,
        external_id="acct-1",
        stage="challenge",
        starting_balance=Decimal("10000"),
        rules={"max_drawdown_pct": "10"},
        metadata={},
    )
    order = Order.objects.create(
        account=account, epoch=0, token_id="tok-1", market_id="0xmarket", side="BUY",
        type="limit", time_in_force="GTC", price=Decimal("0.5"), size=Decimal("10"),
        status=Order.Status.CANCELED,
    )  # fmt: skip
    fill = Fill.objects.create(
        account=account, seq=1, epoch=0, order=order, token_id="tok-1", market_id="0xmarket",
        side="BUY", price=Decimal("0.5"), size=Decimal("2"), notional=Decimal("1"),
        trigger_key="test:fill:1",
    )  # fmt: skip
    outbox = EmailOutbox.objects.create(kind="login_link", to_email="trader1@example.com")
    return {
        "tenant": tenant,
        "issued": issued,
        "api_key": issued.api_key,
        "mapping": mapping,
        "user": mapping.user,
        "account": account,
        "ledger": LedgerEntry.objects.get(account=account),
        "order": order,
        "fill": fill,
        "outbox": outbox,
    }


def action(client, model, name: str, objs, **extra):
    data = {"action": name, ACTION_CHECKBOX_NAME: [str(o.pk) for o in objs], **extra}
    return client.post(url(model, "changelist"), data)


def confirm(client, model, page) -> object:
    """Press "Yes, I'm sure" on a confirmation page: post back its hidden fields."""
    html = page.content.decode()
    fields = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html)
    data: dict[str, list[str]] = {}
    for name, value in fields:
        data.setdefault(name, []).append(value)
    return client.post(url(model, "changelist"), data)


# --- Every page renders, and no page shows a secret hash ------------------------------------
def test_every_registered_changelist_renders(operator, world):
    for model in admin.site._registry:
        response = operator.get(url(model, "changelist"))
        assert response.status_code == 200, model


@pytest.mark.parametrize("term", ["acme", "trader1@example.com", "pk_abcdefgh_", str(uuid.uuid4())])
def test_every_search_box_accepts_any_term(operator, world, term):
    for model, model_admin in admin.site._registry.items():
        if model_admin.search_fields:
            assert operator.get(url(model, "changelist"), {"q": term}).status_code == 200, model


def test_every_change_page_renders(operator, world):
    for key in (
        "tenant",
        "api_key",
        "mapping",
        "user",
        "account",
        "ledger",
        "order",
        "fill",
        "outbox",
    ):
        obj = world[key]
        response = operator.get(url(type(obj), "change", obj.pk))
        assert response.status_code == 200, key


def test_add_pages_render_only_where_adding_makes_sense(operator):
    for model in (Tenant, ApiKey, User):
        assert operator.get(url(model, "add")).status_code == 200, model
    for model in (TenantUser, Account, LedgerEntry, Order, Fill, EmailOutbox):
        assert operator.get(url(model, "add")).status_code == 403, model


def test_the_secret_hash_never_appears_in_admin_html(operator, world):
    secret_hash = world["api_key"].secret_hash
    pages = [url(model, "changelist") for model in admin.site._registry]
    pages += [
        url(Tenant, "change", world["tenant"].pk),
        url(ApiKey, "change", world["api_key"].pk),
        url(ApiKey, "history", world["api_key"].pk),
    ]
    for page in pages:
        html = operator.get(page).content.decode()
        assert secret_hash not in html, page
        assert world["issued"].raw_key not in html, page


def test_api_key_list_shows_the_masked_prefix(operator, world):
    html = operator.get(url(ApiKey, "changelist")).content.decode()

    assert f"pk_{world['api_key'].prefix}_…" in html


def test_api_key_search_finds_a_pasted_key(operator, world, other_tenant):
    apikey_create(tenant=other_tenant)

    response = operator.get(url(ApiKey, "changelist"), {"q": world["issued"].raw_key})

    assert list(response.context["cl"].result_list) == [world["api_key"]]


# --- API keys: add, revoke, rotate -----------------------------------------------------------
def test_adding_a_key_creates_one_key_and_shows_it_exactly_once(operator, tenant):
    response = operator.post(
        url(ApiKey, "add"), {"tenant": tenant.pk, "name": "ci", "scopes": list(ALL_SCOPES)}
    )

    assert response.status_code == 200
    api_key = ApiKey.objects.get()
    html = response.content.decode()
    shown = RAW_KEY_RE.findall(html)
    assert len(shown) == 1
    raw = shown[0]
    assert raw.startswith(f"pk_{api_key.prefix}_")
    assert api_key.secret_hash not in html
    assert "no-store" in response["Cache-Control"]
    caller = keys.authenticate(raw)
    assert (caller.tenant, caller.scopes, caller.api_key.name) == (
        tenant,
        frozenset(ALL_SCOPES),
        "ci",
    )
    # Never again: not on the list, not on the key's page, not in a flashed message.
    for page in (url(ApiKey, "changelist"), url(ApiKey, "change", api_key.pk)):
        assert raw not in operator.get(page).content.decode()
    assert raw not in str(operator.cookies)


def test_adding_a_read_only_key(operator, tenant):
    response = operator.post(
        url(ApiKey, "add"), {"tenant": tenant.pk, "name": "", "scopes": ["accounts:read"]}
    )

    raw = RAW_KEY_RE.findall(response.content.decode())[0]
    assert keys.authenticate(raw).scopes == frozenset({"accounts:read"})


@pytest.mark.parametrize(
    "data",
    [
        {"name": "no tenant", "scopes": ["accounts:read"]},
        {"name": "no scopes", "tenant": "TENANT"},
        {"name": "bad scope", "tenant": "TENANT", "scopes": ["root"]},
    ],
)
def test_adding_a_key_with_a_missing_or_bad_field_creates_nothing(operator, tenant, data):
    data = {k: (tenant.pk if v == "TENANT" else v) for k, v in data.items()}

    response = operator.post(url(ApiKey, "add"), data)

    assert response.status_code == 200
    assert response.context["adminform"].form.errors
    assert not ApiKey.objects.exists()
    assert not RAW_KEY_RE.search(response.content.decode())


def test_existing_keys_cannot_be_edited_or_deleted(operator, world):
    api_key = world["api_key"]
    response = operator.post(
        url(ApiKey, "change", api_key.pk),
        {"tenant": api_key.tenant_id, "name": "hacked", "scopes": []},
    )
    assert response.status_code == 403
    assert operator.post(url(ApiKey, "delete", api_key.pk), {"post": "yes"}).status_code == 403
    api_key.refresh_from_db()
    assert api_key.name == "prod" and api_key.scopes == list(ALL_SCOPES)


def test_revoke_action_asks_then_revokes(operator, world, tenant):
    api_key, raw = world["api_key"], world["issued"].raw_key
    bystander = apikey_create(tenant=tenant)

    page = action(operator, ApiKey, "revoke_keys", [api_key])
    assert page.status_code == 200
    assert "Revoke API keys?" in page.content.decode()
    api_key.refresh_from_db()
    assert api_key.revoked_at is None

    done = confirm(operator, ApiKey, page)
    assert done.status_code == 302
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    keys.key_cache.clear()
    with pytest.raises(InvalidApiKey):
        keys.authenticate(raw)
    assert keys.authenticate(bystander.raw_key).tenant == tenant


def test_rotate_action_shows_the_new_key_once_and_keeps_the_old_one(operator, world, tenant):
    old = world["issued"]

    response = action(operator, ApiKey, "rotate_keys", [old.api_key])

    assert response.status_code == 200
    shown = RAW_KEY_RE.findall(response.content.decode())
    assert len(shown) == 1 and shown[0] != old.raw_key
    assert keys.authenticate(shown[0]).tenant == tenant
    assert keys.authenticate(old.raw_key).api_key == old.api_key
    assert ApiKey.objects.filter(tenant=tenant).count() == 2


# --- Tenants -----------------------------------------------------------------------------------
def test_disable_and_enable_actions(operator, tenant, other_tenant):
    action(operator, Tenant, "disable_tenants", [tenant])
    tenant.refresh_from_db()
    other_tenant.refresh_from_db()
    assert tenant.enabled is False and other_tenant.enabled is True

    action(operator, Tenant, "enable_tenants", [tenant])
    tenant.refresh_from_db()
    assert tenant.enabled is True


def tenant_form(**overrides) -> dict:
    data = {
        "slug": "newco",
        "name": "New Co",
        "enabled": "on",
        "rate_limit_per_second": "50",
        "rate_limit_per_minute": "3000",
        "redirect_allowlist": "",
        "default_landing_url": "/app/",
        "day_boundary_tz": "UTC",
        "day_boundary_time": "00:00",
        "api_keys-TOTAL_FORMS": "0",
        "api_keys-INITIAL_FORMS": "0",
        "api_keys-MIN_NUM_FORMS": "0",
        "api_keys-MAX_NUM_FORMS": "0",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def test_adding_a_tenant_normalises_its_allowlist(operator):
    response = operator.post(
        url(Tenant, "add"),
        tenant_form(redirect_allowlist="HTTPS://App.NewCo.Example/\nhttp://localhost:3000\n"),
    )

    assert response.status_code == 302
    tenant = Tenant.objects.get(slug="newco")
    assert tenant.redirect_allowlist == ["https://app.newco.example", "http://localhost:3000"]


def test_editing_a_tenant(operator, tenant):
    response = operator.post(
        url(Tenant, "change", tenant.pk),
        tenant_form(
            slug=None,
            name="Acme Renamed",
            enabled=None,
            rate_limit_per_second="7",
            redirect_allowlist="https://acme.example",
            default_landing_url="https://acme.example/dashboard",
            day_boundary_tz="America/New_York",
            day_boundary_time="17:00",
        ),
    )

    assert response.status_code == 302
    tenant.refresh_from_db()
    assert tenant.slug == "acme"
    assert (tenant.name, tenant.enabled, tenant.rate_limit_per_second) == ("Acme Renamed", False, 7)
    assert tenant.redirect_allowlist == ["https://acme.example"]
    assert tenant.default_landing_url == "https://acme.example/dashboard"
    assert tenant.day_boundary_tz == "America/New_York"


@pytest.mark.parametrize(
    "field,value",
    [
        ("redirect_allowlist", "http://evil.example"),
        ("redirect_allowlist", "https://ok.example/path"),
        ("default_landing_url", "https://not-allowlisted.example/x"),
        ("default_landing_url", "//evil.example"),
        ("day_boundary_tz", "Mars/Olympus"),
        ("rate_limit_per_second", "0"),
    ],
)
def test_editing_a_tenant_refuses_bad_settings(operator, tenant, field, value):
    response = operator.post(
        url(Tenant, "change", tenant.pk), tenant_form(slug=None, **{field: value})
    )

    assert response.status_code == 200  # the form again, with the error
    assert response.context["adminform"].form.errors
    tenant.refresh_from_db()
    assert tenant.name == "Acme Prop" and tenant.redirect_allowlist == []


# --- Accounts ----------------------------------------------------------------------------------
def test_account_money_is_read_only(operator, world):
    account = world["account"]
    html = operator.get(url(Account, "change", account.pk)).content.decode()
    for name in ("cash", "reserved_cash", "starting_balance", "realized_pnl", "epoch"):
        assert f'name="{name}"' not in html

    response = operator.post(
        url(Account, "change", account.pk), {"cash": "999999", "epoch": "9", "status": "closed"}
    )

    assert response.status_code == 403
    account.refresh_from_db()
    assert account.cash == Decimal("10000")
    assert (account.epoch, account.status) == (0, "active")


def test_accounts_cannot_be_deleted_from_the_admin(operator, world):
    account = world["account"]
    assert operator.post(url(Account, "delete", account.pk), {"post": "yes"}).status_code == 403
    assert Account.objects.filter(pk=account.pk).exists()


def test_account_page_shows_recent_ledger_and_links_to_all_of_it(operator, world):
    account = world["account"]
    html = operator.get(url(Account, "change", account.pk)).content.decode()
    assert "INITIAL_DEPOSIT" in html

    ledger = operator.get(url(LedgerEntry, "changelist"), {"account__exact": str(account.pk)})
    assert ledger.status_code == 200
    assert list(ledger.context["cl"].result_list) == [world["ledger"]]


def test_ledger_search_by_account_id(operator, world, other_tenant):
    mapping, _ = trader_register(tenant=other_tenant, external_id="x", email="x@example.com")
    partner_account_open(
        tenant=other_tenant, user_id=mapping.user_id, external_id="other",
        stage="demo", starting_balance=Decimal("5"),
    )  # fmt: skip

    response = operator.get(url(LedgerEntry, "changelist"), {"q": str(world["account"].pk)})

    assert list(response.context["cl"].result_list) == [world["ledger"]]


def test_close_action_asks_then_closes(operator, world):
    account = world["account"]

    page = action(operator, Account, "close_accounts", [account])
    assert page.status_code == 200
    account.refresh_from_db()
    assert account.status == "active"

    done = confirm(operator, Account, page)
    assert done.status_code == 302
    account.refresh_from_db()
    assert account.status == "closed" and account.closed_at is not None


def test_reset_action_starts_a_new_epoch(operator, world):
    account = world["account"]

    action(operator, Account, "reset_accounts", [account], confirm="yes")

    account.refresh_from_db()
    assert account.epoch == 1
    assert account.cash == Decimal("10000")
    assert account.last_reset_at is not None


def test_reset_of_a_closed_account_reports_the_error(operator, world):
    account = world["account"]
    action(operator, Account, "close_accounts", [account], confirm="yes")

    response = action(operator, Account, "reset_accounts", [account], confirm="yes")
    page = operator.get(response["Location"])

    assert "ACCOUNT_CLOSED" in page.content.decode()
    account.refresh_from_db()
    assert account.epoch == 0


# --- Read-only admins ------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["ledger", "mapping", "order", "fill", "outbox"])
def test_read_only_admins_refuse_writes(operator, world, key):
    obj = world[key]
    model = type(obj)
    assert operator.post(url(model, "change", obj.pk), {}).status_code == 403
    assert operator.post(url(model, "delete", obj.pk), {"post": "yes"}).status_code == 403
    assert model.objects.filter(pk=obj.pk).exists()


# --- Users ---------------------------------------------------------------------------------
def test_adding_an_operator_user_with_an_email(operator):
    response = operator.post(
        url(User, "add"),
        {"email": "  New.Ops@Example.COM ", "usable_password": "true",
         "password1": "a-long-password-1", "password2": "a-long-password-1"},
    )  # fmt: skip

    assert response.status_code == 302
    user = User.objects.get(email="new.ops@example.com")
    assert user.check_password("a-long-password-1")


def test_adding_a_user_whose_email_exists_in_another_case_is_refused(operator, world):
    response = operator.post(
        url(User, "add"), {"email": "TRADER1@example.com", "usable_password": "false"}
    )

    assert response.status_code == 200
    assert User.objects.filter(email__iexact="trader1@example.com").count() == 1


def test_user_search_by_email(operator, world):
    response = operator.get(url(User, "changelist"), {"q": "trader1@"})

    assert list(response.context["cl"].result_list) == [world["user"]]
