"""Double-spend under real concurrency (docs/engine-rules.md C1, L3): 200 market BUYs of
$100 race on one account funded for exactly 50 of them. The account row lock must serialise
the balance check and the spend: exactly 50 fill, 150 are refused for balance, nothing else
happens, the audit is clean.

The server's max_connections is 100 and shared, so the 200 threads (released together by a
Barrier) go through a semaphore of 40 open connections: at any moment up to 40 transactions
contend for the same row lock.

The race can take longer than PRICE_BUS_HEARTBEAT_STALE_SECONDS on a loaded machine, so the
feed heartbeat keeps beating throughout (as the running ingester would); without it the
books went stale mid-race and late orders were refused STALE_BOOK."""

from __future__ import annotations

import threading
from collections import Counter
from decimal import Decimal as D

import pytest
from django.db import connection

from accounts.models import Account
from core import errors
from tests.trading.conftest import (
    audit_clean,
    feed_beating,
    make_market,
    open_account,
    publish_book,
)
from trading.models import Fill, Order
from trading.services import order_place

N_ORDERS = 200
FUNDED_FOR = 50
MAX_CONNECTIONS = 40


@pytest.mark.django_db(transaction=True)
def test_200_concurrent_market_buys_spend_exactly_the_balance():
    _market, yes, _ = make_market()
    # Deep book: 50 × 200 shares = 10,000 shares at 0.50; liquidity never limits.
    publish_book(yes.token_id, asks=[("0.50", "1000000")], bids=[("0.49", "1000000")])
    account = open_account(str(100 * FUNDED_FOR))
    barrier = threading.Barrier(N_ORDERS)
    gate = threading.BoundedSemaphore(MAX_CONNECTIONS)
    results: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        with gate:
            try:
                placed = order_place(
                    account_id=account.pk,
                    token_id=yes.token_id,
                    side="BUY",
                    type="market",
                    amount="100",
                )
                outcome = f"ok:{placed.order.status}"
            except errors.DomainError as exc:
                outcome = exc.code
            except Exception as exc:  # anything else is a failure of the test
                outcome = f"EXC:{type(exc).__name__}:{exc}"
            finally:
                connection.close()
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(N_ORDERS)]
    with feed_beating():
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)

    counts = Counter(results)
    assert counts == {
        "ok:matched": FUNDED_FOR,
        "INVALID_ORDER_NOT_ENOUGH_BALANCE": N_ORDERS - FUNDED_FOR,
    }, counts
    a = Account.objects.get(pk=account.pk)
    assert a.cash == 0 and a.reserved_cash == 0
    assert Order.objects.filter(status="matched").count() == FUNDED_FOR
    assert Order.objects.filter(status="rejected").count() == N_ORDERS - FUNDED_FOR
    fills = list(Fill.objects.filter(account=account).order_by("seq"))
    assert [f.seq for f in fills] == list(range(1, FUNDED_FOR + 1))
    assert all(f.size == D("200") for f in fills)  # $100 / 0.50
    assert [f.filled_at for f in fills] == sorted(f.filled_at for f in fills)
    audit_clean(account)
