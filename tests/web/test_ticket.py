"""The order ticket: preview figures from the live book, orders through the engine, and every
engine error as a sentence next to its field."""

from __future__ import annotations

import html as html_lib
import re
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from core import errors
from tests.factories import UserFactory, personal_account
from tests.trading.conftest import feed_dead, make_market, publish_book
from trading.models import Order
from web.markets.ticket import ERROR_SENTENCES, FIELDS, TicketForm, error_sentences

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(client):
    user = UserFactory()
    account = personal_account(user, "1000")
    market, yes, no = make_market(
        fees_enabled=True, fee_rate=Decimal("0.07"), fee_exponent=Decimal("1")
    )
    publish_book(
        yes.token_id,
        market=market.condition_id,
        bids=[("0.40", "100"), ("0.39", "200")],
        asks=[("0.45", "10"), ("0.47", "20")],
    )
    client.force_login(user)
    return client, user, account, market, yes, no


def _ticket(account, token, **fields):
    data = {
        "account": str(account.pk),
        "token": token.token_id,
        "side": "BUY",
        "type": "limit",
        "tif_limit": "GTC",
        "tif_market": "FOK",
        "price": "",
        "size": "",
        "amount": "",
        "client_order_id": "web-test-1",
    }
    data.update(fields)
    return data


def _preview(client, market, data) -> str:
    response = client.get(reverse("web:market-preview", args=[market.condition_id]), data)
    assert response.status_code == 200
    return response.content.decode()


def _field_error(html: str, field: str) -> str:
    match = re.search(rf'data-testid="error-{field}" role="alert">(.*?)</p>', html, re.S)
    assert match is not None, f"no error next to {field}"
    return html_lib.unescape(match[1].strip())


# --- the mapping ------------------------------------------------------------------------------
def test_every_engine_error_code_has_a_field_and_a_sentence():
    missing = [e.code for e in errors.ENGINE_ERROR_CODES if e.code not in ERROR_SENTENCES]
    assert missing == []
    for code, (field, _sentence) in ERROR_SENTENCES.items():
        assert field in FIELDS, code
    for cls in errors.ENGINE_ERROR_CODES:
        rendered = error_sentences(cls())
        [(field, [sentence])] = rendered.by_field.items()
        # A plain sentence: no code, no placeholder left, not the engine's API message.
        assert sentence.endswith(".") and "_" not in sentence and "{" not in sentence, cls.code
        assert sentence != cls.default_message, cls.code


def test_sentences_fill_in_the_market_rules():
    market, _, _ = make_market(tick_size=Decimal("0.001"), min_order_size=Decimal("15"))
    tick = error_sentences(errors.InvalidOrderMinTickSize(), market=market)
    assert tick.by_field == {"price": ["Use a price in steps of 0.1¢, between 0.1¢ and 99.9¢."]}
    size = error_sentences(errors.InvalidOrderMinSize(), market=market)
    assert size.by_field == {"quantity": ["This market's minimum order is 15 shares."]}


def test_validation_details_go_next_to_their_own_fields():
    exc = errors.ValidationFailed(
        details={
            "size": ["must be > 0 with at most 2 decimals"],
            "price": ["required for limit orders"],
        }
    )
    out = error_sentences(exc)
    assert out.by_field == {
        "quantity": ["Enter more than 0 shares, in hundredths at most."],
        "price": ["Enter a limit price."],
    }


def test_ticket_form_maps_cents_types_and_expiry():
    from django.http import QueryDict

    form = TicketForm.from_data(
        QueryDict(
            "token=t&side=BUY&type=limit&price=45.5&size=10&tif_limit=GTD"
            "&expires_at=2030-01-01T12:00&tz_offset=-60&tif_market=FAK"
        )
    )
    args = form.engine_args()
    assert args["price"] == Decimal("0.455") and args["time_in_force"] == "GTD"
    assert args["expiration"] == 1893495600  # 12:00 at UTC+1 = 11:00 UTC
    assert args["amount"] is None and args["size"] == "10"
    market = TicketForm.from_data(QueryDict("type=market&side=BUY&amount=25&tif_market=FAK"))
    margs = market.engine_args()
    assert margs["time_in_force"] == "FAK" and margs["amount"] == "25"
    assert margs["size"] is None and margs["price"] is None and margs["expiration"] is None


# --- preview ------------------------------------------------------------------------------------
def test_preview_of_a_crossing_limit_buy_shows_fill_fee_cost_and_payout(setup):
    client, _, account, market, yes, _ = setup
    html = _preview(client, market, _ticket(account, yes, price="46", size="15"))
    # 10 fill at 0.45 now (fee 10 × 0.07 × 0.45 × 0.55 = 0.17325 → floored 0.17325), 5 rest.
    assert 'data-testid="preview-fill">10 sh @ 45¢ avg' in html
    assert "Rests</dt><dd>5 sh @ 46¢" in html
    assert 'data-testid="preview-fee">$0.17' in html
    # cost: 4.50 + 0.17325 + reservation of 5 @ 0.46 (2.30 + fee at 0.46: 5 × .07 × .2484
    # = 0.08694 → up 0.08694) = 7.06019
    assert 'data-testid="preview-cost">$7.06' in html
    assert 'data-testid="preview-payout">$15.00' in html


def test_preview_market_buy_by_amount_and_sell_proceeds(setup):
    client, _, account, market, yes, _ = setup
    html = _preview(
        client, market, _ticket(account, yes, type="market", amount="5", tif_market="FAK")
    )
    assert 'data-testid="preview-fill">' in html and "sh @ 45" in html
    sell = _preview(client, market, _ticket(account, yes, side="SELL", price="40", size="5"))
    assert "You don&#x27;t hold enough shares of this outcome" in sell


def test_preview_reports_problems_with_the_engine_sentences(setup):
    client, _, account, market, yes, _ = setup
    fok = _preview(
        client, market, _ticket(account, yes, type="market", amount="900", tif_market="FOK")
    )
    assert "Fill-or-kill" in fok
    post = _preview(client, market, _ticket(account, yes, price="46", size="10", post_only="on"))
    assert "Post-only: this price would trade at once" in post
    tick = _preview(client, market, _ticket(account, yes, price="45.5", size="10"))
    assert "Use a price in steps of 1¢" in tick
    cash = _preview(client, market, _ticket(account, yes, price="44", size="5000"))
    assert "Not enough available cash" in cash
    feed_dead(yes.token_id)
    stale = _preview(client, market, _ticket(account, yes, price="46", size="10"))
    assert "catching up with the exchange" in stale
    resting = _preview(client, market, _ticket(account, yes, price="30", size="10"))
    assert "nothing (rests in the book)" in resting  # a non-crossing order is fine


def test_preview_shows_the_one_refusal_that_decides(setup):
    # A market SELL too large for both the position and the book: the engine refuses it for
    # the position (checked first), and the preview says that, not the FOK sentence too.
    client, _, account, market, yes, _ = setup
    html = _preview(client, market, _ticket(account, yes, side="SELL", type="market", size="5000"))
    assert "You don&#x27;t hold enough shares of this outcome" in html
    assert "Fill-or-kill" not in html


def test_preview_is_quiet_while_the_ticket_is_incomplete(setup):
    client, _, account, market, yes, _ = setup
    html = _preview(client, market, _ticket(account, yes, price="45"))
    assert "to see cost, fee and payout" in html and "preview-errors" not in html


def test_preview_has_no_side_effects(setup):
    client, _, account, market, yes, _ = setup
    _preview(client, market, _ticket(account, yes, price="46", size="15"))
    assert Order.objects.count() == 0


# --- submit -------------------------------------------------------------------------------------
def _submit(client, market, data, **headers):
    return client.post(
        reverse("web:market-order", args=[market.condition_id]),
        data,
        HTTP_HX_REQUEST="true",
        **headers,
    )


def test_limit_order_rests_and_the_ticket_says_so(setup):
    client, _, account, market, yes, _ = setup
    response = _submit(client, market, _ticket(account, yes, price="30", size="10"))
    assert response.status_code == 200
    html = response.content.decode()
    order = Order.objects.get()
    assert order.status == "live" and order.price == Decimal("0.30")
    assert order.client_order_id == "web-test-1"
    assert f'data-order-id="{order.pk}"' in html and "is resting in the book" in html
    new_id = re.search(r'name="client_order_id" value="([^"]+)"', html)[1]
    assert new_id != "web-test-1"  # the next order from this ticket is a new one
    assert response["HX-Trigger"] == "ticket-done"


def test_market_order_fills_and_shows_the_average_price(setup):
    client, _, account, market, yes, _ = setup
    response = _submit(
        client, market, _ticket(account, yes, type="market", amount="10", tif_market="FAK")
    )
    html = response.content.decode()
    order = Order.objects.get()
    assert order.status in ("matched", "canceled") and order.filled_size > 0
    assert "shares at 4" in html or "filled" in html.lower()
    assert 'data-testid="ticket-order-id"' in html


def test_resending_the_same_ticket_replays_instead_of_trading_twice(setup):
    client, _, account, market, yes, _ = setup
    data = _ticket(account, yes, price="30", size="10", client_order_id="web-same")
    _submit(client, market, data)
    again = _submit(client, market, data)
    assert Order.objects.count() == 1
    assert "already sent: here is that order" in again.content.decode()


def test_bad_price_shows_the_sentence_next_to_the_price(setup):
    client, _, account, market, yes, _ = setup
    response = _submit(client, market, _ticket(account, yes, price="45.5", size="10"))
    assert response.status_code == 422
    html = response.content.decode()
    assert _field_error(html, "price") == "Use a price in steps of 1¢, between 1¢ and 99¢."
    assert Order.objects.count() == 0


def test_errors_land_next_to_their_fields(setup):
    client, _user, account, market, yes, _ = setup
    small = _submit(client, market, _ticket(account, yes, price="30", size="1"))
    assert _field_error(small.content.decode(), "quantity") == (
        "This market's minimum order is 5 shares."
    )
    gtd = _submit(
        client,
        market,
        _ticket(
            account, yes, price="30", size="10", tif_limit="GTD", expires_at="2001-01-01T00:00"
        ),
    )
    assert "at least one minute from now" in _field_error(gtd.content.decode(), "expiration")
    sell = _submit(client, market, _ticket(account, yes, side="SELL", price="40", size="10"))
    assert "enough shares" in _field_error(sell.content.decode(), "quantity")
    other = personal_account(UserFactory(), "10")
    stranger = _submit(client, market, _ticket(other, yes, price="30", size="10"))
    assert _field_error(stranger.content.decode(), "account") == "Choose one of your accounts."
    assert Order.objects.filter(status="live").count() == 0


def test_stored_rejection_gets_its_sentence_and_a_fresh_ticket_id(setup):
    client, _, account, market, yes, _ = setup
    response = _submit(client, market, _ticket(account, yes, price="44", size="5000"))
    html = response.content.decode()
    assert "Not enough available cash" in _field_error(html, "quantity")
    assert Order.objects.get().status == "rejected"
    assert 'value="web-test-1"' not in html


def test_order_needs_csrf_and_sign_in(setup):
    _client, user, account, market, yes, _ = setup
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    assert _submit(strict, market, _ticket(account, yes, price="30", size="10")).status_code == 403
    anonymous = Client()
    response = _submit(anonymous, market, _ticket(account, yes, price="30", size="10"))
    assert response.status_code == 302
    assert Order.objects.count() == 0


def test_plain_form_post_renders_the_whole_page(setup):
    client, _, account, market, yes, _ = setup
    response = client.post(
        reverse("web:market-order", args=[market.condition_id]),
        _ticket(account, yes, price="30", size="10"),
    )
    html = response.content.decode()
    assert response.status_code == 200 and "<html" in html and "is resting in the book" in html


def test_mine_fragment_lists_positions_orders_and_fills(setup):
    client, _, account, market, yes, _ = setup
    _submit(client, market, _ticket(account, yes, price="30", size="10", client_order_id="a"))
    _submit(client, market, _ticket(account, yes, price="45", size="5", client_order_id="b"))
    html = client.get(reverse("web:market-mine", args=[market.condition_id])).content.decode()
    assert html.count('data-testid="open-order-row"') == 1
    assert html.count('data-testid="fill-row"') == 1
    assert html.count('data-testid="position-row"') == 1


def test_a_paused_firm_account_gets_its_sentence_next_to_the_account(client, tenant):
    from tests.trading.conftest import open_account

    account = open_account("500", tenant=tenant)
    tenant.enabled = False
    tenant.save(update_fields=["enabled"])
    market, yes, _ = make_market()
    publish_book(yes.token_id, bids=[("0.40", "100")], asks=[("0.45", "10")])
    client.force_login(account.owner)
    response = _submit(client, market, _ticket(account, yes, price="30", size="10"))
    assert response.status_code == 422
    assert _field_error(response.content.decode(), "account") == (
        "The firm that manages this account has paused its trading."
    )
    assert not Order.objects.exists()
