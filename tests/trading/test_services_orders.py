"""order_place / order_cancel / orders_expire through the public services: every validation
code, the time-in-force behaviours, reservations released exactly, client_order_id replays,
positions across buy-buy-sell — with books published on the real price bus."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

import pytest
import time_machine
from django.utils import timezone

from accounts.models import Account, LedgerEntry, Position
from core import errors
from marketdata.bus import get_bus, now_ms
from tests.trading.conftest import (
    audit_clean,
    feed_alive,
    feed_dead,
    make_market,
    open_account,
    publish_book,
)
from trading.models import Fill, Order
from trading.services import (
    account_close,
    order_cancel,
    order_cancel_market,
    order_place,
    orders_expire,
)

pytestmark = pytest.mark.django_db

ASKS = [("0.50", "100"), ("0.52", "200"), ("0.55", "300")]
BIDS = [("0.48", "100"), ("0.45", "200")]


@pytest.fixture
def world():
    market, yes, _no = make_market()
    publish_book(yes.token_id, bids=BIDS, asks=ASKS, market=market.condition_id)
    account = open_account("1000")
    return market, yes, account


def place(account, token, **kw):
    kw.setdefault("side", "BUY")
    kw.setdefault("type", "limit")
    return order_place(account_id=account.pk, token_id=token.token_id, **kw)


def fresh(account):
    return Account.objects.get(pk=account.pk)


# --- validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "code"),
    [
        ({"price": "0.505", "size": "10"}, "INVALID_ORDER_MIN_TICK_SIZE"),
        ({"price": "0.00", "size": "10"}, "INVALID_ORDER_MIN_TICK_SIZE"),
        ({"price": "1.00", "size": "10"}, "INVALID_ORDER_MIN_TICK_SIZE"),
        ({"price": "0.995", "type": "market", "amount": "10"}, "INVALID_ORDER_MIN_TICK_SIZE"),
        ({"price": "0.40", "size": "4.99"}, "INVALID_ORDER_MIN_SIZE"),
        ({"price": "0.40", "size": "10", "time_in_force": "GTD"}, "INVALID_ORDER_EXPIRATION"),
        (
            {"price": "0.40", "size": "10", "post_only": True, "time_in_force": "FOK"},
            "INVALID_POST_ONLY_ORDER_TYPE",
        ),
        (
            {"price": "0.40", "size": "10", "post_only": True, "time_in_force": "FAK"},
            "INVALID_POST_ONLY_ORDER_TYPE",
        ),
        ({"side": "HOLD", "price": "0.40", "size": "10"}, "VALIDATION_FAILED"),
        ({"type": "stop", "price": "0.40", "size": "10"}, "VALIDATION_FAILED"),
        ({"price": "0.40"}, "VALIDATION_FAILED"),
        ({"price": "0.40", "size": "10.001"}, "VALIDATION_FAILED"),
        ({"price": 0.4, "size": "10"}, "VALIDATION_FAILED"),  # floats never enter
        ({"type": "market", "size": "10"}, "VALIDATION_FAILED"),  # market BUY spends amount
        ({"type": "market", "amount": "10", "time_in_force": "GTC"}, "VALIDATION_FAILED"),
        ({"price": "0.40", "size": "10", "expiration": 1999999999}, "VALIDATION_FAILED"),
    ],
)
def test_shape_and_rule_rejections_store_nothing(world, kw, code):
    _, yes, account = world
    with pytest.raises(errors.DomainError) as exc:
        place(account, yes, **kw)
    assert exc.value.code == code
    assert exc.value.status in (400, 422)
    assert Order.objects.count() == 0


def test_gtd_expiration_must_be_at_least_60s_ahead(world):
    _, yes, account = world
    now = int(timezone.now().timestamp())
    with pytest.raises(errors.InvalidOrderExpiration):
        place(account, yes, price="0.40", size="10", time_in_force="GTD", expiration=now + 59)
    placed = place(account, yes, price="0.40", size="10", time_in_force="GTD", expiration=now + 61)
    assert placed.order.status == "live"


def test_unknown_token_is_a_validation_failure(world):
    _, _, account = world
    with pytest.raises(errors.ValidationFailed) as exc:
        order_place(
            account_id=account.pk, token_id="nope", side="BUY", type="limit", price="0.4", size="10"
        )
    assert exc.value.details == {"token_id": ["unknown token"]}


def test_tick_follows_the_live_book(world):
    market, yes, account = world
    publish_book(yes.token_id, bids=BIDS, asks=ASKS, tick_size="0.001", market=market.condition_id)
    placed = place(account, yes, price="0.401", size="10")  # valid at tick 0.001
    assert placed.order.price == D("0.401")


@pytest.mark.parametrize(
    "change",
    [{"closed": True}, {"accepting_orders": False}, {"status": "resolved"}, {"status": "closed"}],
)
def test_market_closed(world, change):
    market, yes, account = world
    for k, v in change.items():
        setattr(market, k, v)
    market.save()
    with pytest.raises(errors.MarketClosed):
        place(account, yes, price="0.40", size="10")


def test_market_not_ready_without_a_book():
    _market, _yes, no = make_market()
    account = open_account()
    with pytest.raises(errors.MarketNotReady):
        place(account, no, price="0.40", size="10")


def test_stale_book_refuses_taker_orders_only(world):
    _market, yes, account = world
    get_bus().mark_stale([yes.token_id])
    with pytest.raises(errors.StaleBook) as exc:
        place(account, yes, type="market", amount="10")
    assert exc.value.status == 503
    with pytest.raises(errors.StaleBook):
        place(account, yes, price="0.60", size="10")  # marketable limit
    resting = place(account, yes, price="0.40", size="10")  # rests, takes nothing
    assert resting.order.status == "live" and resting.fills == []
    assert Fill.objects.count() == 0


def test_fresh_book_of_a_dead_feed_is_stale(world):
    # The feed died without closing its sockets: its last top still says fresh...
    _market, yes, account = world
    feed_dead(yes.token_id, seconds_ago=10)
    top = get_bus().latest(yes.token_id)
    assert top is not None and top.fresh
    with pytest.raises(errors.StaleBook):
        place(account, yes, type="market", amount="10")
    with pytest.raises(errors.StaleBook):
        place(account, yes, price="0.60", size="10")  # marketable limit
    resting = place(account, yes, price="0.40", size="10")  # rests, takes nothing
    assert resting.order.status == "live" and resting.fills == []
    with pytest.raises(errors.InvalidPostOnlyOrder):  # would cross the (unwalked) book
        place(account, yes, price="0.50", size="10", post_only=True)
    assert Fill.objects.count() == 0
    feed_alive()  # ...until it beats again
    assert place(account, yes, type="market", amount="10").fills


def test_heartbeat_older_than_the_setting_is_stale(world, settings):
    _market, yes, account = world
    # The beat's age is judged on the Redis server's clock: backdate the beat itself.
    bus = get_bus()
    shard = bus.shard_of(yes.token_id)
    settings.PRICE_BUS_HEARTBEAT_STALE_SECONDS = 2
    bus.heartbeat(shard, at_ms=now_ms() - 1500)
    assert place(account, yes, type="market", amount="5").fills
    bus.heartbeat(shard, at_ms=now_ms() - 2500)
    with pytest.raises(errors.StaleBook):
        place(account, yes, type="market", amount="5")
    settings.PRICE_BUS_HEARTBEAT_STALE_SECONDS = 5
    assert place(account, yes, type="market", amount="5").fills
    assert Fill.objects.count() == 2
    audit_clean()


def test_order_place_reads_the_bus_once(world, monkeypatch):
    _market, yes, account = world
    bus = get_bus()
    calls = []
    real = bus.latest_live

    def counting(token_id):
        calls.append(token_id)
        return real(token_id)

    monkeypatch.setattr(bus, "latest_live", counting)
    monkeypatch.setattr(bus, "latest", lambda _t: pytest.fail("a second bus read"))
    place(account, yes, type="market", amount="10")
    assert calls == [yes.token_id]


def test_account_closed(world):
    _, yes, account = world
    account_close(account=account)
    with pytest.raises(errors.AccountClosed):
        place(account, yes, price="0.40", size="10")


def test_not_enough_balance_is_stored_rejected(world):
    _, yes, account = world
    # 0.40 × 2600 = 1040 > 1000 available
    with pytest.raises(errors.InvalidOrderNotEnoughBalance):
        place(account, yes, price="0.40", size="2600")
    order = Order.objects.get()
    assert (order.status, order.reason) == ("rejected", "INVALID_ORDER_NOT_ENOUGH_BALANCE")
    assert fresh(account).cash == D("1000") and fresh(account).reserved_cash == 0
    with pytest.raises(errors.InvalidOrderNotEnoughBalance):
        place(account, yes, type="market", amount="1000.01")
    audit_clean()


def test_insufficient_position_no_naked_shorts(world):
    _, yes, account = world
    with pytest.raises(errors.InsufficientPosition):
        place(account, yes, side="SELL", price="0.45", size="10")
    place(account, yes, price="0.50", size="10")  # buy 10
    with pytest.raises(errors.InsufficientPosition):
        place(account, yes, side="SELL", price="0.45", size="10.01")
    assert Order.objects.filter(status="rejected", reason="INSUFFICIENT_POSITION").count() == 2


def test_post_only_that_would_cross_is_rejected_and_one_that_rests_is_live(world):
    _, yes, account = world
    with pytest.raises(errors.InvalidPostOnlyOrder):
        place(account, yes, price="0.50", size="10", post_only=True)
    placed = place(account, yes, price="0.49", size="10", post_only=True)
    assert placed.order.status == "live" and placed.fills == []


def test_fok_not_fillable_in_full(world):
    _, yes, account = world
    # asks within 0.52: 100 + 200 = 300 < 301
    with pytest.raises(errors.FokOrderNotFilledError):
        place(account, yes, price="0.52", size="301", time_in_force="FOK")
    assert Order.objects.get().status == "rejected"
    assert Fill.objects.count() == 0 and fresh(account).cash == D("1000")
    placed = place(account, yes, price="0.52", size="300", time_in_force="FOK")
    assert placed.order.status == "matched"
    got = [(f.price, f.size) for f in placed.fills]
    assert got == [(D("0.5"), D("100")), (D("0.52"), D("200"))]
    audit_clean()


# --- time in force ------------------------------------------------------------------------------
def test_fak_fills_what_is_there_and_cancels_the_rest(world):
    _, yes, account = world
    placed = place(account, yes, price="0.50", size="150", time_in_force="FAK")
    order = placed.order
    assert (order.status, order.reason) == ("canceled", "FAK_REMAINDER")
    assert order.filled_size == D("100") and order.reserved_cash == 0
    a = fresh(account)
    assert a.cash == D("950") and a.reserved_cash == 0  # 100 × 0.50
    audit_clean()


def test_gtc_fills_what_crosses_and_rests_the_remainder_with_its_reservation(world):
    _, yes, account = world
    placed = place(account, yes, price="0.52", size="400")
    order = placed.order
    assert order.status == "live"
    assert order.filled_size == D("300")
    # fills: 100 × 0.50 + 200 × 0.52 = 50 + 104 = 154; remainder 100 × 0.52 = 52 reserved
    a = fresh(account)
    assert a.cash == D("846") and a.reserved_cash == D("52") and order.reserved_cash == D("52")
    assert placed.fills[0].seq == 1 and placed.fills[1].seq == 2
    audit_clean()
    cancelled = order_cancel(account_id=account.pk, order_id=order.pk)
    assert (cancelled.status, cancelled.reason) == ("canceled", "USER")
    a = fresh(account)
    assert a.cash == D("846") and a.reserved_cash == 0
    # idempotent cancel
    assert order_cancel(account_id=account.pk, order_id=order.pk).status == "canceled"
    audit_clean()


def test_market_sell_defaults_worst_price_to_the_tick(world):
    _, yes, account = world
    place(account, yes, price="0.55", size="400")  # 100 @ .50, 200 @ .52, 100 @ .55
    placed = place(account, yes, side="SELL", type="market", size="350", time_in_force="FAK")
    assert placed.order.price == D("0.01")
    # bids: 100 @ 0.48 + 200 @ 0.45 = 300 sold, the other 50 cancelled
    got = [(f.price, f.size) for f in placed.fills]
    assert got == [(D("0.48"), D("100")), (D("0.45"), D("200"))]
    assert (placed.order.status, placed.order.reason) == ("canceled", "FAK_REMAINDER")
    assert Position.objects.get(account=account).reserved_size == 0
    audit_clean()


def test_market_sell_larger_than_held_is_insufficient(world):
    _, yes, account = world
    place(account, yes, price="0.50", size="100")
    with pytest.raises(errors.InsufficientPosition):
        place(account, yes, side="SELL", type="market", size="250")


def test_market_buy_defaults_worst_price_to_099(world):
    _, yes, account = world
    placed = place(account, yes, type="market", amount="10")
    assert placed.order.price == D("0.99") and placed.order.time_in_force == "FOK"
    assert placed.fills[0].size == D("20")  # 10 / 0.50


def test_gtd_expiry_releases_exactly_what_was_reserved(world):
    _, yes, account = world
    now = timezone.now()
    exp = int(now.timestamp()) + 120
    placed = place(account, yes, price="0.40", size="100", time_in_force="GTD", expiration=exp)
    other = place(account, yes, price="0.30", size="10")  # GTC, stays
    assert fresh(account).reserved_cash == D("43")  # 40 + 3
    assert orders_expire(now=now + dt.timedelta(seconds=119)) == 0
    assert orders_expire(now=now + dt.timedelta(seconds=121)) == 1
    assert orders_expire(now=now + dt.timedelta(seconds=121)) == 0  # twice: nothing
    placed.order.refresh_from_db()
    assert (placed.order.status, placed.order.reason) == ("expired", "EXPIRED")
    assert fresh(account).reserved_cash == D("3")
    other.order.refresh_from_db()
    assert other.order.status == "live"
    audit_clean()


def test_sell_reservation_released_on_cancel_market(world):
    market, yes, account = world
    place(account, yes, price="0.50", size="100")
    placed = place(account, yes, side="SELL", price="0.60", size="40")
    pos = Position.objects.get(account=account, token_id=yes.token_id)
    assert pos.reserved_size == D("40") and placed.order.reserved_shares == D("40")
    with pytest.raises(errors.InsufficientPosition):
        place(account, yes, side="SELL", price="0.60", size="60.01")
    assert order_cancel_market(account_id=account.pk, market_id=market.condition_id) == 1
    pos.refresh_from_db()
    assert pos.reserved_size == 0
    audit_clean()


def test_cancel_matched_order_is_illegal(world):
    _, yes, account = world
    placed = place(account, yes, price="0.50", size="10")
    with pytest.raises(errors.DomainError) as exc:
        order_cancel(account_id=account.pk, order_id=placed.order.pk)
    assert exc.value.code == "ILLEGAL_TRANSITION"


def test_cancel_of_another_accounts_order_is_not_found(world):
    _, yes, account = world
    placed = place(account, yes, price="0.40", size="10")
    other = open_account()
    with pytest.raises(errors.NotFound):
        order_cancel(account_id=other.pk, order_id=placed.order.pk)


def test_close_cancels_resting_orders_and_releases(world):
    _, yes, account = world
    place(account, yes, price="0.40", size="10")
    account_close(account=account)
    a = fresh(account)
    assert a.reserved_cash == 0 and Order.objects.get().reason == "ACCOUNT_CLOSED"
    audit_clean()


# --- duplicates ---------------------------------------------------------------------------------
def test_client_order_id_replay_and_conflict(world):
    _, yes, account = world
    first = place(account, yes, price="0.50", size="10", client_order_id="abc")
    assert first.created
    again = place(account, yes, price="0.50", size="10", client_order_id="abc")
    assert not again.created and again.order.pk == first.order.pk
    assert [f.pk for f in again.fills] == [f.pk for f in first.fills]
    assert Fill.objects.count() == 1
    with pytest.raises(errors.InvalidOrderDuplicated):
        place(account, yes, price="0.50", size="11", client_order_id="abc")
    # another account may use the same id
    other = open_account()
    assert place(other, yes, price="0.50", size="10", client_order_id="abc").created


def test_replay_of_a_rejected_order_raises_the_same_error(world):
    _, yes, account = world
    with pytest.raises(errors.InvalidOrderNotEnoughBalance):
        place(account, yes, price="0.40", size="9999", client_order_id="big")
    with pytest.raises(errors.InvalidOrderNotEnoughBalance):
        place(account, yes, price="0.40", size="9999", client_order_id="big")
    assert Order.objects.count() == 1


# --- positions, P&L, trading days ---------------------------------------------------------
def test_buy_buy_sell_average_cost_and_realized_pnl(world):
    _market, yes, account = world
    place(account, yes, price="0.50", size="100")  # 100 @ 0.50 = 50
    place(account, yes, price="0.52", size="100")  # 100 @ 0.52 = 52
    pos = Position.objects.get(account=account, token_id=yes.token_id)
    # avg = (50 + 52) / 200 = 0.51
    assert (pos.size, pos.cost_basis, pos.avg_price) == (D("200"), D("102"), D("0.51"))
    # sell 150 into bids: 100 @ 0.48 + 50 @ 0.45
    sold = place(account, yes, side="SELL", price="0.45", size="150")
    assert [(f.price, f.size) for f in sold.fills] == [(D("0.48"), D("100")), (D("0.45"), D("50"))]
    # realized: (0.48 − 0.51) × 100 + (0.45 − 0.51) × 50 = −3 − 3 = −6
    assert [f.realized_pnl for f in sold.fills] == [D("-3"), D("-3")]
    pos.refresh_from_db()
    assert (pos.size, pos.cost_basis, pos.avg_price, pos.realized_pnl) == (
        D("50"),
        D("25.5"),
        D("0.51"),
        D("-6"),
    )
    a = fresh(account)
    # cash: 1000 − 50 − 52 + 48 + 22.5 = 968.5
    assert a.cash == D("968.5") and a.realized_pnl == D("-6")
    assert a.last_fill_seq == 4 and a.trading_days == 1
    assert list(Fill.objects.order_by("seq").values_list("seq", flat=True)) == [1, 2, 3, 4]
    kinds = list(LedgerEntry.objects.filter(account=account).values_list("kind", "amount"))
    assert kinds[0] == ("INITIAL_DEPOSIT", D("1000"))
    assert [k for k, _ in kinds[1:]] == ["TRADE"] * 4
    assert a.equity_snapshots.count() == 1 + 3  # open + one per order that filled
    audit_clean()


def test_trading_days_count_tenant_days(world, tenant):
    _, yes, _ = world
    tenant.day_boundary_tz = "UTC"
    tenant.day_boundary_time = dt.time(17, 0)
    tenant.save()
    account = open_account("1000", tenant=tenant)
    with time_machine.travel(dt.datetime(2026, 5, 6, 16, 0, tzinfo=dt.UTC), tick=True):
        place(account, yes, price="0.50", size="10")
    with time_machine.travel(dt.datetime(2026, 5, 6, 16, 59, tzinfo=dt.UTC), tick=True):
        place(account, yes, price="0.50", size="10")
    assert fresh(account).trading_days == 1
    with time_machine.travel(dt.datetime(2026, 5, 6, 17, 1, tzinfo=dt.UTC), tick=True):
        place(account, yes, price="0.50", size="10")
    a = fresh(account)
    assert a.trading_days == 2 and a.last_trading_day == dt.date(2026, 5, 6)


def test_fill_times_never_go_backwards_along_the_feed(world):
    """The trades feed pages by seq; a fill written by a host whose clock is behind the one
    that wrote the previous fill must not appear earlier in time than it."""
    import datetime as dt
    import itertools

    from django.utils import timezone

    from trading.models import Fill

    _, yes, account = world
    first = place(account, yes, type="market", amount="5").fills
    ahead = timezone.now() + dt.timedelta(minutes=5)  # the previous writer's clock ran ahead
    Fill.objects.filter(pk=first[-1].pk).update(filled_at=ahead)
    later = place(account, yes, type="market", amount="5").fills
    assert later and all(f.filled_at >= ahead for f in later)
    seqs = list(
        Fill.objects.filter(account=account).order_by("seq").values_list("seq", "filled_at")
    )
    assert [s for s, _ in seqs] == list(range(1, len(seqs) + 1))
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(seqs))


def test_fill_times_never_go_backwards_when_no_position_row_carries_the_last_fill(world):
    """The placement reads the last fill's time along with the account's positions; an
    account whose every position is closed (and none in the order's token) still has its
    new fills clamped after its last one."""
    _, yes, account = world
    bought = place(account, yes, type="market", amount="5").fills
    size = sum((f.size for f in bought), D(0))
    sold = place(account, yes, side="SELL", type="market", size=str(size)).fills
    assert Position.objects.get(account=account, token_id=yes.token_id).size == 0
    ahead = timezone.now() + dt.timedelta(minutes=5)
    Fill.objects.filter(pk=sold[-1].pk).update(filled_at=ahead)
    market2, yes2, _ = make_market()
    publish_book(yes2.token_id, bids=BIDS, asks=ASKS, market=market2.condition_id)
    later = place(account, yes2, type="market", amount="5").fills
    assert later and all(f.filled_at >= ahead for f in later)
    before = len(bought) + len(sold)
    assert [f.seq for f in later] == list(range(before + 1, before + 1 + len(later)))
    audit_clean(account)


def test_a_filled_market_order_is_a_fixed_statement_budget(world):
    """Placement's reads and writes are fixed SQL in two round trips and nothing loads
    lazily: with positions held in this token and another, a market BUY locks the account
    and reads the positions and the token (one round trip), and writes the order, the fill,
    the ledger, the position, the snapshot and the account (another)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    _, yes, account = world
    market2, yes2, _ = make_market()
    publish_book(yes2.token_id, bids=BIDS, asks=ASKS, market=market2.condition_id)
    place(account, yes, type="market", amount="5")
    place(account, yes2, type="market", amount="5")
    with CaptureQueriesContext(connection) as ctx:
        placed = place(account, yes, type="market", amount="5")
    assert placed.fills
    sent = [
        q["sql"] for q in ctx.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))
    ]
    assert len(sent) == 2, sent  # two round trips
    reads, writes = ([s.split()[:3] for s in text.split(";\n")] for text in sent)
    assert [r[0] for r in reads] == ["SELECT"] * 3  # account (locked), positions, token
    assert [w[:3] if w[0] == "INSERT" else w[:2] for w in writes] == [
        ["INSERT", "INTO", "trading_order"],
        ["UPDATE", "accounts_position"],
        ["INSERT", "INTO", "trading_fill"],
        ["INSERT", "INTO", "accounts_ledgerentry"],
        ["INSERT", "INTO", "accounts_equitysnapshot"],
        ["UPDATE", "accounts_account"],
    ], writes
    audit_clean(account)
