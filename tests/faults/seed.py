"""Seed a fault-test stack (run as `python -m tests.faults.seed` with DATABASE_URL set): a
tenant with a partner key, a trader with a trader key and a funded tenant account, and one
open market with two tokens. Prints what the tests need as one JSON line."""

from __future__ import annotations

import json
import os
from decimal import Decimal


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from accounts.services import trader_key_create
    from accounts.services.wallets import account_open, user_ensure
    from marketdata.models import Market, Token
    from partners.services import apikey_create, tenant_create

    tenant = tenant_create(
        slug="faults", name="Faults Prop", rate_limit_per_second=10_000, rate_limit_per_minute=10**6
    )
    partner_key = apikey_create(tenant=tenant, name="faults").raw_key
    trader = user_ensure(email="trader@faults.example")
    _, trader_key = trader_key_create(user=trader, name="faults")
    account = account_open(
        owner=trader,
        tenant=tenant,
        external_id="faults-1",
        stage="challenge",
        starting_balance=Decimal("100000"),
    )
    market = Market.objects.create(
        condition_id="0xfaults",
        question="Will the stack heal itself?",
        tick_size=Decimal("0.01"),
        min_order_size=Decimal("5"),
        accepting_orders=True,
        closed=False,
    )
    yes = Token.objects.create(market=market, token_id="900001", outcome="Yes", index=0)
    no = Token.objects.create(market=market, token_id="900002", outcome="No", index=1)
    print(
        json.dumps(
            {
                "partner_key": partner_key,
                "trader_key": trader_key,
                "account_id": str(account.pk),
                "condition_id": market.condition_id,
                "tokens": [yes.token_id, no.token_id],
            }
        )
    )


if __name__ == "__main__":
    main()
