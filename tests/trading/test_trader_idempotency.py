"""Idempotency-Key on the native trader API's POST and DELETE (issue #4: "client_order_id
and Idempotency-Key make retries safe"): the partner API's mechanism (core/api/idempotency.py,
docs/partner-api.md rules: same request → first 2xx replayed; different request → 422
IDEMPOTENCY_KEY_REUSED; in flight → 409 IDEMPOTENCY_KEY_IN_USE), scoped per trader user."""

from __future__ import annotations

import threading
from collections import Counter
from decimal import Decimal

import pytest
from django.db import connection
from rest_framework.response import Response

from accounts.models import Account
from core import errors
from core.api.idempotency import idempotent_call
from partners.models import IdempotencyRecord
from tests.factories import UserFactory
from tests.factories import personal_account as personal
from tests.factories import trader_client as client_for
from tests.trading.conftest import audit_clean, make_market, publish_book
from trading.models import Order

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    user = UserFactory()
    _market, yes, _no = make_market()
    publish_book(yes.token_id, asks=[("0.50", "100")], bids=[("0.48", "100")])
    return user, yes, personal(user, "1000"), client_for(user)


def buy(account: Account, token_id: str, **fields) -> dict:
    body = {"account_id": str(account.pk), "token_id": token_id, "side": "BUY",
            "type": "limit", "price": "0.50", "size": "10"}  # fmt: skip
    body.update(fields)
    return body


def post(client, body: dict, key: str | None = "k-1"):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    return client.post("/v1/orders", body, format="json", **headers)


def test_replay_returns_the_first_response_and_trades_once(world):
    user, yes, account, client = world
    first = post(client, buy(account, yes.token_id))
    assert first.status_code == 201, first.content
    assert "Idempotent-Replayed" not in first

    again = post(client, buy(account, yes.token_id))

    assert again.status_code == 201 and again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert Order.objects.count() == 1
    assert Account.objects.get(pk=account.pk).cash == Decimal("995")  # 10 × 0.50, once
    record = IdempotencyRecord.objects.get()
    assert (record.user_id, record.tenant_id, record.key) == (user.pk, None, "k-1")
    audit_clean(account)


def test_same_key_with_a_different_request_is_rejected(world):
    _user, yes, account, client = world
    assert post(client, buy(account, yes.token_id)).status_code == 201

    response = post(client, buy(account, yes.token_id, size="11"))

    assert response.status_code == 422 and response.json()["error"] == "IDEMPOTENCY_KEY_REUSED"
    assert Order.objects.count() == 1


def test_keys_are_scoped_per_trader(world):
    _user, yes, account, client = world
    bo = UserFactory()
    bo_account = personal(bo, "1000")
    assert post(client, buy(account, yes.token_id)).status_code == 201

    response = post(client_for(bo), buy(bo_account, yes.token_id))  # same key, another user

    assert response.status_code == 201 and "Idempotent-Replayed" not in response
    assert Order.objects.count() == 2
    # …and every credential of one trader shares the scope: a second key of the same user
    assert post(client_for(_user), buy(account, yes.token_id))["Idempotent-Replayed"] == "true"


def test_an_invalid_key_is_a_validation_error_and_nothing_is_placed(world):
    _user, yes, account, client = world
    response = post(client, buy(account, yes.token_id), key="has space")
    assert response.status_code == 422 and response.json()["error"] == "VALIDATION_FAILED"
    assert Order.objects.count() == 0


def test_a_stored_rejection_stays_stored_and_is_not_replayed(world):
    """The engine stores some rejections (orders.py): under a key they commit as without one,
    and, like every error, are not recorded — a retry with the key runs again."""
    _user, yes, account, client = world
    fok = buy(account, yes.token_id, time_in_force="FOK", size="500")  # only 100 offered

    first = post(client, fok)
    assert first.status_code == 422 and first.json()["error"] == "FOK_ORDER_NOT_FILLED_ERROR"
    assert Order.objects.filter(status="rejected").count() == 1
    assert not IdempotencyRecord.objects.exists()

    second = post(client, fok)
    assert second.json()["error"] == "FOK_ORDER_NOT_FILLED_ERROR"
    assert "Idempotent-Replayed" not in second
    assert Order.objects.filter(status="rejected").count() == 2
    audit_clean(account)


def test_a_validation_error_rolls_back_and_a_retry_runs(world):
    _user, yes, account, client = world
    bad = post(client, buy(account, yes.token_id, price="0.505"))
    assert bad.json()["error"] == "INVALID_ORDER_MIN_TICK_SIZE"
    assert post(client, buy(account, yes.token_id)).status_code == 201  # same key, new body


def test_cancel_all_replays_its_count(world):
    _user, yes, account, client = world
    assert post(client, buy(account, yes.token_id, price="0.40"), key=None).status_code == 201
    url = f"/v1/orders?account_id={account.pk}"

    first = client.delete(url, HTTP_IDEMPOTENCY_KEY="cancel-1")
    again = client.delete(url, HTTP_IDEMPOTENCY_KEY="cancel-1")
    other_query = client.delete(f"{url}&market=0xother", HTTP_IDEMPOTENCY_KEY="cancel-1")

    assert first.json() == {"canceled": 1}
    assert again.json() == {"canceled": 1} and again["Idempotent-Replayed"] == "true"
    assert other_query.status_code == 422
    assert other_query.json()["error"] == "IDEMPOTENCY_KEY_REUSED"
    assert Account.objects.get(pk=account.pk).reserved_cash == 0
    audit_clean(account)


def test_cancel_one_replays_the_order_as_first_answered(world):
    _user, yes, account, client = world
    placed = post(client, buy(account, yes.token_id, price="0.40"), key=None).json()
    url = f"/v1/orders/{placed['id']}"

    first = client.delete(url, HTTP_IDEMPOTENCY_KEY="c-1")
    again = client.delete(url, HTTP_IDEMPOTENCY_KEY="c-1")

    assert first.status_code == again.status_code == 200
    assert first.json()["status"] == "canceled" and again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"


def test_the_service_needs_exactly_one_scope(world):
    user, *_ = world
    with pytest.raises(ValueError):
        idempotent_call(key="k", method="POST", path="/", body=b"", call=lambda: Response({}))
    with pytest.raises(ValueError):
        idempotent_call(tenant=object(), user=user, key="k", method="POST", path="/",  # type: ignore[arg-type]
                        body=b"", call=lambda: Response({}))  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_concurrent_retries_place_exactly_one_order():
    """Eight copies of one request with one key race on PostgreSQL: one places the order;
    the others get 409 IDEMPOTENCY_KEY_IN_USE while it runs, or its replay afterwards."""
    user = UserFactory()
    _market, yes, _no = make_market()
    publish_book(yes.token_id, asks=[("0.50", "1000")], bids=[("0.48", "100")])
    account = personal(user, "1000")
    workers = 8
    barrier = threading.Barrier(workers)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        client = client_for(user)
        try:
            barrier.wait()
            response = post(client, buy(account, yes.token_id), key="race")
            if response.status_code == 201:
                outcome = "replayed" if "Idempotent-Replayed" in response else "placed"
            else:
                outcome = response.json()["error"]
        except Exception as exc:  # a failure of the test, reported below
            outcome = f"EXC {type(exc).__name__}: {exc}"
        finally:
            connection.close()
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    counts = Counter(outcomes)
    assert counts["placed"] == 1 and sum(counts.values()) == workers, counts
    assert set(counts) <= {"placed", "replayed", errors.IdempotencyKeyInUse.code}, counts
    assert Order.objects.filter(account=account).count() == 1
    assert Account.objects.get(pk=account.pk).cash == Decimal("995")
    audit_clean(account)
