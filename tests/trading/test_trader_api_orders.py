"""Orders on the native trader API, /v1/orders: placing against a published book, listing,
cancelling one, some or all, only ever on the caller's own accounts; the engine's codes reach
the client unchanged; client_order_id replays; CSRF for sessions; GTD expiry by the task."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest
import time_machine
from django.middleware.csrf import _get_new_csrf_string
from django.test import Client
from django.utils import timezone

from accounts.models import Account
from accounts.services.wallets import account_open
from marketdata.bus import get_bus
from partners.services import tenant_set_enabled
from tests.factories import UserFactory
from tests.factories import personal_account as personal
from tests.factories import trader_client as client_for
from tests.trading.conftest import audit_clean, make_market, publish_book
from trading import tasks
from trading.apis.orders import OrderDetailOutput, OrderOutput
from trading.models import Order
from trading.services import account_close
from trading.wire import TradeOutput

pytestmark = pytest.mark.django_db

ASKS = [("0.50", "100"), ("0.52", "200"), ("0.55", "300")]
BIDS = [("0.48", "100"), ("0.45", "200")]


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error"] == code and response["X-Error-Code"] == code
    return body


@pytest.fixture
def ana():
    return UserFactory(email="ana@example.com")


@pytest.fixture
def bo():
    return UserFactory(email="bo@example.com")


@pytest.fixture
def world(ana):
    """A market with a live book on its Yes token, Ana's funded account and her client."""
    market, yes, _no = make_market()
    publish_book(yes.token_id, bids=BIDS, asks=ASKS, market=market.condition_id)
    return market, yes, personal(ana), client_for(ana)


def order(account: Account, token_id: str, **fields) -> dict:
    body = {"account_id": str(account.pk), "token_id": token_id, "side": "BUY", "type": "limit"}
    body.update(fields)
    return body


def post(client, body: dict):
    return client.post("/v1/orders", body, format="json")


def envelope(client, account: Account) -> dict:
    response = client.get(f"/v1/accounts/{account.pk}")
    assert response.status_code == 200, response.content
    return response.json()


# --- placing ----------------------------------------------------------------------------------
def test_marketable_limit_buy_fills_at_once_and_shows_in_the_account(world):
    _market, yes, account, client = world

    response = post(client, order(account, yes.token_id, price="0.52", size="150"))

    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == set(OrderDetailOutput().fields)
    assert (body["status"], body["filled_size"], body["filled_notional"]) == (
        "matched",
        "150",
        "76.00",
    )
    assert body["account_id"] == str(account.pk) and body["time_in_force"] == "GTC"
    assert [(f["price"], f["size"]) for f in body["fills"]] == [("0.5", "100"), ("0.52", "50")]
    assert all(f["order_id"] == body["id"] for f in body["fills"])

    state = envelope(client, account)
    assert state["balance"] == "924.00" and state["reserved_balance"] == "0.00"
    [position] = state["positions"]
    assert position["token_id"] == yes.token_id and Decimal(position["size"]) == 150

    trades = client.get(f"/v1/trades?account_id={account.pk}").json()["data"]
    assert trades == body["fills"]  # the same item shape as the trades feed
    assert set(trades[0]) == set(TradeOutput().fields)
    audit_clean(account)


def test_market_buy_spends_an_amount(world):
    _market, yes, account, client = world
    response = post(client, order(account, yes.token_id, type="market", amount="25"))
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["status"], body["time_in_force"], body["filled_size"]) == ("matched", "FOK", "50")
    assert body["size"] is None and body["amount"] == "25.00"


def test_resting_order_is_listed_live_and_delete_cancels_it_releasing_the_reservation(world):
    _market, yes, account, client = world
    placed = post(client, order(account, yes.token_id, price="0.40", size="10")).json()
    assert (placed["status"], placed["reserved_cash"], placed["fills"]) == ("live", "4.00", [])
    assert envelope(client, account)["reserved_balance"] == "4.00"
    assert envelope(client, account)["available_balance"] == "996.00"

    live = client.get(f"/v1/orders?account_id={account.pk}&status=live").json()
    assert [o["id"] for o in live["data"]] == [placed["id"]]
    assert set(live["data"][0]) == set(OrderOutput().fields)
    assert client.get(f"/v1/orders/{placed['id']}").json()["status"] == "live"

    response = client.delete(f"/v1/orders/{placed['id']}")

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["reason"], body["reserved_cash"]) == ("canceled", "USER", "0.00")
    state = envelope(client, account)
    assert state["reserved_balance"] == "0.00" and state["available_balance"] == "1000.00"
    assert client.get(f"/v1/orders?account_id={account.pk}&status=live").json()["data"] == []
    assert client.delete(f"/v1/orders/{placed['id']}").status_code == 200  # idempotent
    audit_clean(account)


def test_cancelling_a_filled_order_is_illegal_transition(world):
    _market, yes, account, client = world
    filled = post(client, order(account, yes.token_id, price="0.50", size="10")).json()
    assert filled["status"] == "matched"
    assert_error(client.delete(f"/v1/orders/{filled['id']}"), 409, "ILLEGAL_TRANSITION")


def test_sell_rests_with_reserved_shares_and_is_released_on_cancel(world):
    _market, yes, account, client = world
    post(client, order(account, yes.token_id, price="0.50", size="20"))
    sell = post(client, order(account, yes.token_id, side="SELL", price="0.60", size="20")).json()
    assert (sell["status"], sell["reserved_shares"]) == ("live", "20")
    assert client.delete(f"/v1/orders/{sell['id']}").json()["reserved_shares"] == "0"
    audit_clean(account)


def test_delete_for_a_market_then_for_the_whole_account(world):
    market, yes, account, client = world
    other_market, other_yes, _ = make_market()
    publish_book(other_yes.token_id, bids=BIDS, asks=ASKS, market=other_market.condition_id)
    first = post(client, order(account, yes.token_id, price="0.40", size="10")).json()
    second = post(client, order(account, yes.token_id, price="0.41", size="10")).json()
    third = post(client, order(account, other_yes.token_id, price="0.40", size="10")).json()

    one_market = client.delete(f"/v1/orders?account_id={account.pk}&market={market.condition_id}")
    assert one_market.status_code == 200 and one_market.json() == {"canceled": 2}
    statuses = {o.pk: o.status for o in Order.objects.all()}
    assert statuses[uuid.UUID(first["id"])] == statuses[uuid.UUID(second["id"])] == "canceled"
    assert statuses[uuid.UUID(third["id"])] == "live"
    assert envelope(client, account)["reserved_balance"] == "4.00"

    assert client.delete(f"/v1/orders?account_id={account.pk}").json() == {"canceled": 1}
    assert client.delete(f"/v1/orders?account_id={account.pk}").json() == {"canceled": 0}
    assert envelope(client, account)["reserved_balance"] == "0.00"
    audit_clean(account)


def test_listing_filters_and_pages(world):
    market, yes, account, client = world
    ids = [
        post(client, order(account, yes.token_id, price=f"0.3{n}", size="10")).json()["id"]
        for n in range(3)
    ]
    client.delete(f"/v1/orders/{ids[0]}")
    base = f"/v1/orders?account_id={account.pk}"

    first = client.get(f"{base}&limit=2").json()
    second = client.get(f"{base}&limit=2&cursor={first['next_cursor']}").json()
    assert [o["id"] for o in first["data"] + second["data"]] == ids
    assert first["has_more"] is True and second["has_more"] is False
    assert [o["id"] for o in client.get(f"{base}&status=canceled").json()["data"]] == ids[:1]
    assert len(client.get(f"{base}&market={market.condition_id}").json()["data"]) == 3
    assert client.get(f"{base}&token_id=other").json()["data"] == []

    assert_error(client.get(f"{base}&status=open"), 422, "VALIDATION_FAILED")
    assert_error(client.get("/v1/orders"), 422, "VALIDATION_FAILED")
    wrong_scope = client.get(f"{base}&status=live&cursor={first['next_cursor']}")
    assert_error(wrong_scope, 400, "INVALID_CURSOR")


# --- whose account ----------------------------------------------------------------------------
def test_another_traders_account_is_404_like_a_missing_one(world, bo):
    _market, yes, _account, client = world
    theirs = personal(bo)

    responses = [
        post(client, order(theirs, yes.token_id, price="0.50", size="10")),
        post(client, {**order(theirs, yes.token_id, price="0.50", size="10"), "account_id": "x"}),
        post(
            client,
            {
                **order(theirs, yes.token_id, price="0.5", size="10"),
                "account_id": str(uuid.uuid4()),
            },
        ),
        client.get(f"/v1/orders?account_id={theirs.pk}"),
        client.delete(f"/v1/orders?account_id={theirs.pk}"),
    ]

    for response in responses:
        assert response.status_code == 404
        assert response.json() == {"error": "NOT_FOUND", "message": "Not found."}
    assert Order.objects.count() == 0


def test_another_traders_order_is_404_and_stays_live(world, bo):
    _market, yes, _account, client = world
    theirs = personal(bo)
    their_order = post(client_for(bo), order(theirs, yes.token_id, price="0.40", size="10"))
    order_id = their_order.json()["id"]

    for response in (
        client.get(f"/v1/orders/{order_id}"),
        client.delete(f"/v1/orders/{order_id}"),
        client.get(f"/v1/orders/{uuid.uuid4()}"),
        client.delete("/v1/orders/not-a-uuid"),
    ):
        assert response.status_code == 404
        assert response.json() == {"error": "NOT_FOUND", "message": "Not found."}
    assert Order.objects.get(pk=order_id).status == "live"


def test_the_account_is_checked_before_the_order_itself(world, bo, ana, tenant):
    """Whose account, then whether it is open and its firm enabled, then the order: a bad
    order on an account the caller may not trade on says so about the account."""
    _market, yes, account, client = world
    bad_orders = [
        {"price": "0.40", "size": "10", "time_in_force": "GTD", "expiration": 1},
        {"price": "0.40", "size": "10", "type": "market", "time_in_force": "GTC"},
        {"price": "0.405", "size": "10"},  # off the tick
        {"price": "0.40", "size": "10", "token_id": "no-such-token"},
    ]
    firm = account_open(
        owner=ana, tenant=tenant, external_id="a-2", stage="challenge",
        starting_balance=Decimal("1000"),
    )  # fmt: skip
    tenant_set_enabled(tenant=tenant, enabled=False)
    theirs = personal(bo)
    account_close(account=account)
    for fields in bad_orders:
        body = {**order(account, yes.token_id), **fields}
        for refused, status, code in (
            (theirs, 404, "NOT_FOUND"),
            (account, 409, "ACCOUNT_CLOSED"),
            (firm, 403, "TENANT_DISABLED"),
        ):
            response = post(client, {**body, "account_id": str(refused.pk)})
            assert_error(response, status, code)
    assert Order.objects.count() == 0


def test_closed_account_is_refused_with_account_closed(world):
    _market, yes, account, client = world
    account_close(account=account)
    response = post(client, order(account, yes.token_id, price="0.40", size="10"))
    assert_error(response, 409, "ACCOUNT_CLOSED")


def test_frozen_tenant_account_is_refused_with_tenant_disabled(world, ana, tenant):
    _market, yes, _account, client = world
    firm = account_open(
        owner=ana, tenant=tenant, external_id="a-1", stage="challenge",
        starting_balance=Decimal("1000"),
    )  # fmt: skip
    resting = post(client, order(firm, yes.token_id, price="0.40", size="10")).json()
    tenant_set_enabled(tenant=tenant, enabled=False)

    response = post(client, order(firm, yes.token_id, price="0.40", size="10"))

    assert_error(response, 403, "TENANT_DISABLED")
    # Cancelling only reduces exposure: still allowed on a frozen account.
    assert client.delete(f"/v1/orders/{resting['id']}").json()["status"] == "canceled"


# --- the engine's codes, through the API ------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({"price": "0.505", "size": "10"}, 400, "INVALID_ORDER_MIN_TICK_SIZE"),
        ({"price": "1.00", "size": "10"}, 400, "INVALID_ORDER_MIN_TICK_SIZE"),
        ({"price": "0.40", "size": "4.99"}, 400, "INVALID_ORDER_MIN_SIZE"),
        ({"price": "0.40", "size": "5000"}, 422, "INVALID_ORDER_NOT_ENOUGH_BALANCE"),
        ({"side": "SELL", "price": "0.40", "size": "10"}, 422, "INSUFFICIENT_POSITION"),
        (
            {"price": "0.51", "size": "150", "time_in_force": "FOK"},
            422,
            "FOK_ORDER_NOT_FILLED_ERROR",
        ),
        ({"price": "0.50", "size": "10", "post_only": True}, 422, "INVALID_POST_ONLY_ORDER"),
        (
            {"price": "0.40", "size": "10", "post_only": True, "time_in_force": "FAK"},
            400,
            "INVALID_POST_ONLY_ORDER_TYPE",
        ),
        ({"price": "0.40", "size": "10", "time_in_force": "GTD"}, 400, "INVALID_ORDER_EXPIRATION"),
        ({"price": "0.40", "size": "10.001"}, 422, "VALIDATION_FAILED"),
    ],
)
def test_engine_rejections_surface_with_their_code(world, fields, status, code):
    _market, yes, account, client = world
    assert_error(post(client, order(account, yes.token_id, **fields)), status, code)
    assert envelope(client, account)["balance"] == "1000.00"


def test_market_closed(world):
    market, yes, account, client = world
    market.accepting_orders = False
    market.save()
    response = post(client, order(account, yes.token_id, price="0.40", size="10"))
    assert_error(response, 422, "MARKET_CLOSED")


def test_market_not_ready_without_a_book(world):
    _market, _yes, account, client = world
    _other, other_yes, _ = make_market()
    response = post(client, order(account, other_yes.token_id, price="0.40", size="10"))
    assert_error(response, 422, "MARKET_NOT_READY")


def test_stale_book_refuses_taker_orders_with_503(world):
    _market, yes, account, client = world
    get_bus().mark_stale([yes.token_id])
    response = post(client, order(account, yes.token_id, price="0.60", size="10"))
    assert_error(response, 503, "STALE_BOOK")
    resting = post(client, order(account, yes.token_id, price="0.40", size="10"))
    assert resting.status_code == 201  # a maker order does not need a fresh book


# --- input shape ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"price": 0.5, "size": "10"}, "price"),  # a JSON float never enters
        ({"price": "0.50", "size": 10.5}, "size"),
        ({"price": "0.50", "size": "10", "colour": "red"}, "colour"),
        ({"price": "0.50", "size": "10", "side": "HOLD"}, "side"),
        ({"price": "0.50", "size": "10", "expiration": "soon"}, "expiration"),
        ({"price": "1e100", "size": "10"}, "price"),
    ],
)
def test_malformed_bodies_are_validation_failed(world, fields, field):
    _market, yes, account, client = world
    body = assert_error(
        post(client, order(account, yes.token_id, **fields)), 422, "VALIDATION_FAILED"
    )
    assert field in body["details"]
    assert Order.objects.count() == 0


def test_integer_price_and_size_are_accepted_as_exact_values(world):
    _market, yes, account, client = world
    response = post(client, order(account, yes.token_id, price="0.4", size=10))
    assert response.status_code == 201, response.content
    assert response.json()["size"] == "10"


# --- retries ----------------------------------------------------------------------------------
def test_client_order_id_replay_returns_the_same_order_with_200(world):
    _market, yes, account, client = world
    body = order(account, yes.token_id, price="0.52", size="150", client_order_id="bot-1")

    first = post(client, body)
    again = post(client, body)
    changed = post(client, {**body, "size": "151"})

    assert first.status_code == 201 and again.status_code == 200
    assert again.json() == first.json()
    assert_error(changed, 422, "INVALID_ORDER_DUPLICATED")
    assert Order.objects.count() == 1
    assert envelope(client, account)["balance"] == "924.00"  # filled once


def test_client_order_id_replay_of_a_rejection_is_the_same_rejection(world):
    _market, yes, account, client = world
    body = order(account, yes.token_id, price="0.40", size="5000", client_order_id="bot-2")
    assert_error(post(client, body), 422, "INVALID_ORDER_NOT_ENOUGH_BALANCE")
    assert_error(post(client, body), 422, "INVALID_ORDER_NOT_ENOUGH_BALANCE")
    assert Order.objects.get().status == "rejected"


# --- session callers --------------------------------------------------------------------------
def test_session_post_needs_the_csrf_token(world, ana):
    _market, yes, account, _client = world
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(ana)
    body = order(account, yes.token_id, price="0.40", size="10")

    refused = browser.post("/v1/orders", body, content_type="application/json")
    assert_error(refused, 403, "CSRF_FAILED")

    token = _get_new_csrf_string()
    browser.cookies["csrftoken"] = token
    accepted = browser.post(
        "/v1/orders", body, content_type="application/json", HTTP_X_CSRFTOKEN=token
    )
    assert accepted.status_code == 201, accepted.content
    assert_error(browser.delete(f"/v1/orders/{accepted.json()['id']}"), 403, "CSRF_FAILED")


# --- expiry -----------------------------------------------------------------------------------
def test_expiry_task_expires_a_passed_gtd_order_and_releases_its_reservation(world):
    _market, yes, account, client = world
    now = timezone.now().replace(microsecond=0)
    with time_machine.travel(now, tick=False):
        placed = post(
            client,
            order(
                account, yes.token_id, price="0.40", size="10", time_in_force="GTD",
                expiration=int(now.timestamp()) + 120,
            ),
        ).json()  # fmt: skip
        assert placed["status"] == "live" and placed["expiration"] == int(now.timestamp()) + 120
        assert tasks.orders_expire.delay().get() == 0  # not yet

    with time_machine.travel(now + dt.timedelta(seconds=121), tick=False):
        assert tasks.orders_expire.delay().get() == 1
        assert tasks.orders_expire.delay().get() == 0  # twice: nothing more

    expired = client.get(f"/v1/orders/{placed['id']}").json()
    assert (expired["status"], expired["reason"], expired["reserved_cash"]) == (
        "expired",
        "EXPIRED",
        "0.00",
    )
    assert envelope(client, account)["reserved_balance"] == "0.00"
    audit_clean(account)


def test_expiry_runs_every_15_seconds_on_beat(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["orders-expire"]
    assert entry == {"task": "trading.tasks.orders_expire", "schedule": 15.0}


def test_trades_render_exactly_as_trade_output(world):
    """The placement response and /v1/trades render fills through the TRADE shape: the same
    dict as DRF's TradeOutput(...).data for taker fills (with fees), as loaded back from the
    database, and for a fill whose optional fields are empty."""
    from trading.models import Fill
    from trading.wire import TRADE

    market, yes, account, client = world
    response = post(client, order(account, yes.token_id, price="0.55", size="250"))
    assert response.status_code == 201, response.content
    placed = response.json()["fills"]
    stored = list(Fill.objects.filter(account=account).order_by("seq"))
    assert len(stored) == len(placed) >= 2
    assert placed == [dict(TradeOutput(f).data) for f in stored]
    assert TRADE.render_many(stored) == placed
    bare = Fill(
        account=account,
        seq=99,
        epoch=0,
        kind=Fill.Kind.SETTLEMENT,
        token_id=yes.token_id,
        market_id=market.condition_id,
        side="SELL",
        price=Decimal("1"),
        size=Decimal("3.5"),
        notional=Decimal("3.5"),
        fee_rate_bps=None,
        liquidity=None,
        book_as_of=None,
        trigger_key="x",
    )
    assert TRADE.render(bare) == dict(TradeOutput(bare).data)
