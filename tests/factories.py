"""factory_boy factories and small builders shared by the suite."""

from __future__ import annotations

from decimal import Decimal

import factory
from rest_framework.test import APIClient

from accounts.models import User
from partners.models import Tenant


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant
        django_get_or_create = ("slug",)

    slug = factory.Sequence(lambda n: f"firm-{n}")
    name = factory.LazyAttribute(lambda o: f"{o.slug.title()} Capital")
    enabled = True


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("email",)

    email = factory.Sequence(lambda n: f"trader{n}@example.com")


def make_partner_client(
    tenant: Tenant, scopes: list[str] | None = None, name: str = "test"
) -> APIClient:
    """An APIClient sending a fresh key of `tenant` in X-API-Key; `.raw_key` and `.api_key`
    are attached for tests that need them."""
    from partners.services import apikey_create

    issued = apikey_create(tenant=tenant, name=name, scopes=scopes)
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=issued.raw_key)
    client.raw_key = issued.raw_key  # type: ignore[attr-defined]
    client.api_key = issued.api_key  # type: ignore[attr-defined]
    return client


def money(value: str) -> Decimal:
    return Decimal(value)


class AccountFactory(factory.django.DjangoModelFactory):
    """A wallet row with cash equal to its starting balance (no ledger entries: for tests
    that only display accounts; money-moving tests go through accounts.services)."""

    class Meta:
        model = "accounts.Account"

    owner = factory.SubFactory(UserFactory)
    tenant = None
    external_id = None
    stage = None
    starting_balance = Decimal("10000.00")
    cash = factory.LazyAttribute(lambda o: o.starting_balance)


def trader_client(user: User) -> APIClient:
    """An APIClient sending a fresh personal trader key (tk_) of `user` as a Bearer token."""
    from accounts.services import trader_key_create

    _, raw = trader_key_create(user=user, name="test")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def personal_account(user: User, balance: str = "1000"):
    """The user's personal wallet, funded through the ledger like any account."""
    from accounts.services.wallets import account_open

    return account_open(
        owner=user, tenant=None, external_id=None, stage=None, starting_balance=Decimal(balance)
    )
