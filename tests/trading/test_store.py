"""trading.store: the engine's locking read and its one writer store exactly what the engine
computed, read back through the ORM, all or nothing."""

from __future__ import annotations

import uuid
from decimal import Decimal as D

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Account, EquitySnapshot, LedgerEntry, Position
from tests.trading.conftest import make_market, open_account
from trading import engine, store
from trading.engine import Effects, Evidence, Execution, OrderState, PositionState
from trading.models import Fill, Order

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = "50% 'odds' %s or %(x)s? \\ done"


def _event(account: Account, token_id: str, market_id: str, trigger: str) -> Effects:
    """Lock the account and apply one taker BUY of 10 @ 0.40 (fee 0.05) through the engine."""
    locked = store.lock(account.pk, token_id=token_id)
    assert locked.account is not None and locked.market is not None
    fx = Effects(locked.account, timezone.now())
    order = OrderState(
        id=uuid.uuid4(),
        account_id=account.pk,
        epoch=locked.account.epoch,
        token_id=token_id,
        market_id=market_id,
        side="BUY",
        price=D("0.45"),
        size=D("10"),
        status="live",
        client_order_id="c-1",
        created_at=fx.now,
        new=True,
    )
    position = PositionState(None, token_id, market_id, QUESTION, "Yes")
    engine.fill(
        fx,
        order,
        position,
        [Execution(D("0.40"), D("10"), D("0.05"))],
        Evidence(engine.TAKER, "book", fx.now, "h", [["0.40", "10.00"]], D("0.41"), D("200")),
        trigger_keys=[trigger],
        labels=(QUESTION, "Yes"),
    )
    order.status = "matched"
    engine.snapshot(fx, engine.holdings_value([position], {}))
    return fx


def test_what_the_writer_stores_reads_back_through_the_orm():
    market, yes, _ = make_market(question=QUESTION)
    account = open_account("100")
    with transaction.atomic():
        fx = _event(account, yes.token_id, market.condition_id, f"t:{uuid.uuid4()}")
        store.write(fx)
    (order,) = fx.orders
    stored = Order.objects.get(pk=order.id)
    for name in ("status", "price", "size", "filled_size", "filled_notional", "fees_paid",
                 "client_order_id", "reserved_cash", "epoch", "market_id"):  # fmt: skip
        assert getattr(stored, name) == getattr(order, name), name
    (row,) = fx.fills
    fill = Fill.objects.get(pk=row.id)
    for name in ("seq", "price", "size", "notional", "fee", "fee_rate_bps", "liquidity",
                 "realized_pnl", "book_hash", "levels", "vwap", "mid_gap", "trigger_key",
                 "market_question", "filled_at"):  # fmt: skip
        assert getattr(fill, name) == getattr(row, name), name
    assert fill.market_question == QUESTION  # quotes, % and backslashes written as they are
    assert [(e.kind, e.amount, e.balance_after) for e in LedgerEntry.objects.filter(
        account=account, fill_id=row.id).order_by("id")] == [
        ("TRADE", D("-4"), D("96")),
        ("FEE", D("-0.05"), D("95.95")),
    ]  # fmt: skip
    position = Position.objects.get(account=account, token_id=yes.token_id)
    assert (position.size, position.avg_price, position.cost_basis, position.realized_pnl) == (
        D("10"),
        D("0.4"),
        D("4"),
        D("-0.05"),
    )
    snap = EquitySnapshot.objects.filter(account=account).latest("at", "id")
    assert (snap.cash, snap.positions_value, snap.equity) == (D("95.95"), D("4"), D("99.95"))
    account.refresh_from_db()
    assert (account.cash, account.last_fill_seq, account.fees_paid, account.trading_days) == (
        D("95.95"),
        1,
        D("0.05"),
        1,
    )


def test_a_failing_write_stores_nothing_of_its_event():
    market, yes, _ = make_market()
    account = open_account("100")
    trigger = f"t:{uuid.uuid4()}"
    with transaction.atomic():
        store.write(_event(account, yes.token_id, market.condition_id, trigger))
    before = (Order.objects.count(), Fill.objects.count(), LedgerEntry.objects.count())
    # The same trigger again: the fill's unique key refuses it, and the whole batch with it.
    with pytest.raises(IntegrityError), transaction.atomic():
        store.write(_event(account, yes.token_id, market.condition_id, trigger))
    assert (Order.objects.count(), Fill.objects.count(), LedgerEntry.objects.count()) == before
    account.refresh_from_db()
    assert (account.cash, account.last_fill_seq) == (D("95.95"), 1)


def test_the_locking_read_scopes_to_the_owner():
    market, yes, _ = make_market()
    account = open_account("100")
    with transaction.atomic():
        mine = store.lock(account.pk, owner_id=account.owner_id, token_id=yes.token_id)
        theirs = store.lock(account.pk, owner_id=account.owner_id + 1, token_id=yes.token_id)
        malformed = store.lock("not-a-uuid", token_id=yes.token_id)
    assert mine.account is not None and mine.account.cash == D("100")
    assert mine.market is not None and mine.market.condition_id == market.condition_id
    assert theirs.account is None and theirs.market is not None
    assert malformed.account is None


def test_reads_connect_when_the_thread_has_no_connection():
    # A request's first query may be one of these reads (a web thread with no connection
    # yet, or one Django closed after a failed health check).
    from django.db import connection

    account = open_account("100")
    connection.close()
    assert store.owned_account_row(account.pk, owner_id=account.owner_id) is not None
    connection.close()
    with transaction.atomic():
        assert store.lock(account.pk).account is not None
