"""`positions[].liquidation_value` on the native GET /v1/accounts/{id} (docs/engine-rules.md §6:
"Liquidation value (best bid walk) is shown beside it"): the live bids walked best-first
after taker fees; shares beyond the published depth add nothing; null without a live book.
The partner envelope's shape is the partner contract's and does not carry it."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.factories import UserFactory, trader_client
from tests.trading.conftest import feed_dead, make_market, publish_book
from trading.services import order_place

pytestmark = pytest.mark.django_db


@pytest.fixture
def holding():
    """A personal account holding 100 YES of a market with taker fees (rate 0.02, e = 1)."""
    from tests.factories import personal_account

    user = UserFactory()
    account = personal_account(user, "1000")
    _market, yes, _ = make_market(fees_enabled=True, fee_rate=Decimal("0.02"), fee_exponent=1)
    publish_book(yes.token_id, asks=[("0.40", "500")], bids=[("0.38", "60"), ("0.35", "100")])
    order_place(account_id=account.pk, token_id=yes.token_id, side="BUY", type="limit",
                price="0.40", size="100")  # fmt: skip
    return user, account, yes


def position_of(user, account) -> dict:
    response = trader_client(user).get(f"/v1/accounts/{account.pk}")
    assert response.status_code == 200, response.content
    (position,) = response.json()["positions"]
    return position


def test_walks_the_bids_after_fees(holding):
    user, account, _yes = holding
    position = position_of(user, account)
    # 60 @ 0.38 = 22.80, fee floor5(60 × 0.02 × 0.38 × 0.62) = 0.28272
    # 40 @ 0.35 = 14.00, fee floor5(40 × 0.02 × 0.35 × 0.65) = 0.18200
    assert position["liquidation_value"] == "36.33528"
    assert position["mark_price"] == "0.39" and position["market_value"] == "39.00"


def test_shares_beyond_the_published_depth_add_nothing(holding):
    user, account, yes = holding
    publish_book(yes.token_id, asks=[("0.40", "500")], bids=[("0.38", "60")])
    assert position_of(user, account)["liquidation_value"] == "22.51728"  # 22.80 − 0.28272


def test_no_bids_is_zero(holding):
    user, account, yes = holding
    publish_book(yes.token_id, asks=[("0.40", "500")], bids=[])
    assert position_of(user, account)["liquidation_value"] == "0.00"


@pytest.mark.parametrize("how", ["stale", "dead feed"])
def test_null_without_a_live_book(holding, how):
    user, account, yes = holding
    if how == "stale":
        publish_book(yes.token_id, asks=[("0.40", "500")], bids=[("0.38", "60")], fresh=False)
    else:
        feed_dead(yes.token_id)
    position = position_of(user, account)
    assert position["liquidation_value"] is None
    assert position["mark_source"] == "last_known"


def test_partner_envelope_stays_the_partner_contract(partner, tenant):
    from accounts.services.wallets import account_open

    user = UserFactory()
    account = account_open(owner=user, tenant=tenant, external_id="x-1", stage="challenge",
                           starting_balance=Decimal("1000"))  # fmt: skip
    _market, yes, _ = make_market()
    publish_book(yes.token_id, asks=[("0.40", "500")], bids=[("0.38", "60")])
    order_place(account_id=account.pk, token_id=yes.token_id, side="BUY", type="limit",
                price="0.40", size="10")  # fmt: skip

    (partner_position,) = partner.get(f"/v1/partner/accounts/{account.pk}").json()["positions"]
    native_position = position_of(user, account)

    assert "liquidation_value" not in partner_position
    assert native_position.pop("liquidation_value") == "3.80"  # no fees on this market
    assert native_position == partner_position
