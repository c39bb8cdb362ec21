"""Operator commands `manage.py tenant ...` and `manage.py apikey ...`, in the exact forms the
runbooks use, asserted through the database and through key authentication."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from core.errors import InvalidApiKey, NotFound
from partners import keys
from partners.models import ALL_SCOPES, ApiKey, Tenant
from partners.services import apikey_create

pytestmark = pytest.mark.django_db

RAW_KEY_RE = re.compile(r"^pk_[a-z0-9]{8}_[A-Za-z0-9_-]{40,}$")


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def last_line(output: str) -> str:
    return output.rstrip("\n").splitlines()[-1]


# --- tenant ---------------------------------------------------------------------------------
def test_tenant_create_with_defaults_is_enabled_with_default_limits(settings):
    out = run("tenant", "create", "acme", "--name", "Acme Prop")

    tenant = Tenant.objects.get(slug="acme")
    assert tenant.name == "Acme Prop"
    assert tenant.enabled is True
    assert tenant.rate_limit_per_second == settings.RATE_LIMIT_DEFAULT_PER_SECOND
    assert tenant.rate_limit_per_minute == settings.RATE_LIMIT_DEFAULT_PER_MINUTE
    assert "acme" in out


def test_tenant_create_with_flags():
    run(
        "tenant", "create", "slowco", "--name", "Slow Co", "--disabled",
        "--rate-limit-per-second", "5", "--rate-limit-per-minute", "120",
    )  # fmt: skip

    tenant = Tenant.objects.get(slug="slowco")
    assert tenant.enabled is False
    assert (tenant.rate_limit_per_second, tenant.rate_limit_per_minute) == (5, 120)


def test_tenant_create_duplicate_slug_is_an_error():
    run("tenant", "create", "acme", "--name", "Acme Prop")

    with pytest.raises(CommandError, match="already exists"):
        run("tenant", "create", "acme", "--name", "Other")
    assert Tenant.objects.get(slug="acme").name == "Acme Prop"


@pytest.mark.parametrize(
    "args",
    [
        ("tenant", "create", "acme"),  # --name is required
        ("tenant", "create", "acme", "--name", "A", "--rate-limit-per-second", "0"),
        ("tenant", "create", "acme", "--name", "A", "--rate-limit-per-minute", "lots"),
        ("tenant", "create", "not a slug!", "--name", "A"),
        ("tenant",),  # a subcommand is required
        ("tenant", "frobnicate", "acme"),
    ],
)
def test_tenant_bad_invocations_are_errors(args):
    with pytest.raises(CommandError):
        run(*args)
    assert not Tenant.objects.exists()


def test_tenant_disable_then_enable(tenant):
    run("tenant", "disable", "acme")
    tenant.refresh_from_db()
    assert tenant.enabled is False

    run("tenant", "enable", "acme")
    tenant.refresh_from_db()
    assert tenant.enabled is True


def test_disabled_tenant_keys_get_not_found(tenant):
    issued = apikey_create(tenant=tenant)
    run("tenant", "disable", "acme")
    keys.key_cache.clear()

    with pytest.raises(NotFound):
        keys.authenticate(issued.raw_key)


@pytest.mark.parametrize("subcommand", ["enable", "disable"])
def test_tenant_enable_disable_unknown_slug_is_an_error(subcommand):
    with pytest.raises(CommandError, match="unknown tenant 'nope'"):
        run("tenant", subcommand, "nope")


def test_allow_redirect_normalises_the_origin_and_is_idempotent(tenant):
    run("tenant", "allow-redirect", "acme", "HTTPS://App.Acme.Example/")
    run("tenant", "allow-redirect", "acme", "https://app.acme.example")
    run("tenant", "allow-redirect", "acme", "http://localhost:3000")

    tenant.refresh_from_db()
    assert tenant.redirect_allowlist == ["https://app.acme.example", "http://localhost:3000"]


@pytest.mark.parametrize(
    "origin",
    [
        "not a url",
        "ftp://acme.example",
        "http://acme.example",  # plain http only for localhost
        "https://acme.example/path",
        "https://acme.example/?q=1",
        "https://user:pw@acme.example",
        "javascript:alert(1)",
    ],
)
def test_allow_redirect_rejects_junk(tenant, origin):
    with pytest.raises(CommandError, match="bad origin"):
        run("tenant", "allow-redirect", "acme", origin)
    tenant.refresh_from_db()
    assert tenant.redirect_allowlist == []


def test_allow_redirect_unknown_slug_is_an_error():
    with pytest.raises(CommandError, match="unknown tenant"):
        run("tenant", "allow-redirect", "nope", "https://nope.example")


# --- apikey create ------------------------------------------------------------------------------
def test_apikey_create_prints_the_key_alone_on_the_last_line_and_it_authenticates(tenant):
    out = run("apikey", "create", "acme", "--name", "production")

    raw = last_line(out)
    assert RAW_KEY_RE.match(raw)
    assert out.count(raw) == 1
    caller = keys.authenticate(raw)
    assert caller.tenant == tenant
    assert caller.scopes == frozenset(ALL_SCOPES)
    assert caller.api_key.name == "production"
    assert ApiKey.objects.filter(tenant=tenant).count() == 1
    # The hash is stored, never printed.
    assert caller.api_key.secret_hash not in out


def test_apikey_create_read_only_key(tenant):
    raw = last_line(run("apikey", "create", "acme", "--scopes", "accounts:read"))

    assert keys.authenticate(raw).scopes == frozenset({"accounts:read"})


def test_apikey_create_several_scopes_with_spaces(tenant):
    raw = last_line(run("apikey", "create", "acme", "--scopes", "users:write, accounts:read"))

    assert keys.authenticate(raw).scopes == frozenset({"users:write", "accounts:read"})


@pytest.mark.parametrize("scopes", ["accounts:delete", "accounts:read,admin", ",", ""])
def test_apikey_create_unknown_or_empty_scope_is_an_error(tenant, scopes):
    with pytest.raises(CommandError):
        run("apikey", "create", "acme", "--scopes", scopes)
    assert not ApiKey.objects.exists()


def test_apikey_create_unknown_tenant_is_an_error():
    with pytest.raises(CommandError, match="unknown tenant 'nope'"):
        run("apikey", "create", "nope")


# --- apikey revoke ------------------------------------------------------------------------------
def _reference(issued, form: str) -> str:
    prefix = issued.api_key.prefix
    return {
        "bare": prefix,
        "pk": f"pk_{prefix}",
        "masked": f"pk_{prefix}_…",
        "full": issued.raw_key,
    }[form]


@pytest.mark.parametrize("form", ["bare", "pk", "masked", "full"])
def test_apikey_revoke_by_any_reference_form(tenant, form):
    issued = apikey_create(tenant=tenant)
    keys.authenticate(issued.raw_key)  # valid and now cached

    out = run("apikey", "revoke", _reference(issued, form))

    keys.key_cache.clear()
    with pytest.raises(InvalidApiKey):
        keys.authenticate(issued.raw_key)
    issued.api_key.refresh_from_db()
    assert issued.api_key.revoked_at is not None
    secret = issued.raw_key.split("_", 2)[2]
    assert secret not in out
    assert f"pk_{issued.api_key.prefix}_…" in out


def test_apikey_revoke_leaves_other_keys_working(tenant):
    revoked = apikey_create(tenant=tenant)
    kept = apikey_create(tenant=tenant)

    run("apikey", "revoke", revoked.api_key.prefix)

    keys.key_cache.clear()
    assert keys.authenticate(kept.raw_key).api_key == kept.api_key


def test_apikey_revoke_twice_is_fine(tenant):
    issued = apikey_create(tenant=tenant)
    run("apikey", "revoke", issued.api_key.prefix)
    first = ApiKey.objects.get(pk=issued.api_key.pk).revoked_at

    out = run("apikey", "revoke", issued.api_key.prefix)

    assert "already revoked" in out
    assert ApiKey.objects.get(pk=issued.api_key.pk).revoked_at == first


@pytest.mark.parametrize("reference", ["zzzzzzzz", "pk_zzzzzzzz", "pk_zzzzzzzz_" + "x" * 43])
def test_apikey_revoke_unknown_prefix_is_an_error(tenant, reference):
    with pytest.raises(CommandError, match="unknown API key pk_zzzzzzzz_…") as excinfo:
        run("apikey", "revoke", reference)
    assert "x" * 43 not in str(excinfo.value)


@pytest.mark.parametrize("reference", ["short", "pk_", "TOOLONG123", "pk_abc!defg_secretsecret"])
def test_apikey_revoke_malformed_reference_is_an_error_that_echoes_nothing(reference):
    with pytest.raises(CommandError, match="expected a key prefix") as excinfo:
        run("apikey", "revoke", reference)
    assert "secretsecret" not in str(excinfo.value)


# --- apikey rotate / list -----------------------------------------------------------------------
def test_apikey_rotate_prints_a_new_key_with_the_same_scopes_and_keeps_the_old(tenant):
    old = apikey_create(tenant=tenant, name="prod", scopes=["accounts:read"])

    raw = last_line(run("apikey", "rotate", old.api_key.prefix))

    assert RAW_KEY_RE.match(raw) and raw != old.raw_key
    new_caller = keys.authenticate(raw)
    assert new_caller.tenant == tenant
    assert new_caller.scopes == frozenset({"accounts:read"})
    assert keys.authenticate(old.raw_key).api_key == old.api_key


def test_apikey_list_shows_prefixes_never_secrets(tenant, other_tenant):
    mine = apikey_create(tenant=tenant, name="prod")
    theirs = apikey_create(tenant=other_tenant)
    run("apikey", "revoke", mine.api_key.prefix)

    out_all = run("apikey", "list")
    out_mine = run("apikey", "list", "acme")

    assert f"pk_{mine.api_key.prefix}_…" in out_all and f"pk_{theirs.api_key.prefix}_…" in out_all
    assert f"pk_{theirs.api_key.prefix}" not in out_mine
    assert "revoked" in out_mine
    for issued in (mine, theirs):
        assert issued.raw_key not in out_all
        assert issued.api_key.secret_hash not in out_all
