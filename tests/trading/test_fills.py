"""The taker walk on RECORDED real books (expected VWAPs and fees worked out by hand below),
the amount semantics of a market BUY, depletion (in process and on Redis), and the rule that
a token's own book is the only liquidity it sees."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal as D

import pytest

from accounts.models import Account, LedgerEntry, Position
from core import errors
from tests.trading.conftest import (
    audit_clean,
    make_market,
    open_account,
    publish_book,
    publish_snapshot,
)
from trading.fillmodel import buy_reservation, taker_fee, walk_book
from trading.services import order_place

pytestmark = pytest.mark.django_db


def load(shared_dir, rel):
    return json.loads((shared_dir / "fixtures" / "polymarket" / rel).read_text())


@pytest.fixture
def ws_book(shared_dir):
    return load(shared_dir, "ws/nt_ws_book_captured_2026-08.json")


def buy(account, token, **kw):
    kw.setdefault("type", "limit")
    return order_place(account_id=account.pk, token_id=token.token_id, side="BUY", **kw)


def test_fok_buy_walks_the_recorded_ws_book_with_fees(ws_book):
    """nt_ws_book_captured_2026-08: asks best-first 0.08 × 228198.28, 0.09 × 153220.41, …;
    bids 0.07 × 182528.55 …; mid (0.07 + 0.08) / 2 = 0.075; timestamp 1786604072222.
    Market fees: rate 0.05, exponent 1."""
    _market, yes, _ = make_market(fees_enabled=True, fee_rate=D("0.05"), fee_exponent=D("1"))
    publish_snapshot(ws_book, token_id=yes.token_id)
    account = open_account("30000")

    placed = buy(account, yes, price="0.09", size="300000", time_in_force="FOK")

    # Level 1: all 228198.28 @ 0.08  → notional 0.08 × 228198.28 = 18255.8624
    #   fee = 228198.28 × 0.05 × (0.08 × 0.92) = 11409.914 × 0.0736 = 839.7696704 → 839.76967
    # Level 2: 300000 − 228198.28 = 71801.72 @ 0.09 → notional 6462.1548
    #   fee = 71801.72 × 0.05 × (0.09 × 0.91) = 3590.086 × 0.0819 = 294.0280434 → 294.02804
    # Total notional 24718.0172; VWAP 24718.0172 / 300000 = 0.0823933906… → 0.082393
    # mid gap (BUY: vwap − mid) = 0.0823933906… − 0.075 → 0.007393
    f1, f2 = placed.fills
    assert (f1.price, f1.size, f1.notional, f1.fee) == (
        D("0.08"),
        D("228198.28"),
        D("18255.8624"),
        D("839.76967"),
    )
    assert (f2.price, f2.size, f2.notional, f2.fee) == (
        D("0.09"),
        D("71801.72"),
        D("6462.1548"),
        D("294.02804"),
    )
    for f in placed.fills:
        assert f.vwap == D("0.082393") and f.mid_gap == D("0.007393")
        assert f.price_source == "book" and f.liquidity == "taker"
        assert f.book_hash == ws_book["hash"]
        assert f.book_as_of == dt.datetime(2026, 8, 13, 6, 54, 32, 222000, tzinfo=dt.UTC)
        assert f.levels == [["0.08", "228198.28"], ["0.09", "71801.72"]]
        assert f.fee_rate_bps == D("500")
    assert placed.order.status == "matched" and placed.order.fees_paid == D("1133.79771")
    a = Account.objects.get(pk=account.pk)
    # 30000 − 24718.0172 − 839.76967 − 294.02804 = 4148.18509
    assert a.cash == D("4148.18509") and a.fees_paid == D("1133.79771")
    assert a.realized_pnl == D("-1133.79771")  # a BUY's fee is realized at once
    fees = LedgerEntry.objects.filter(account=account, kind="FEE").values_list("amount", flat=True)
    assert sorted(fees) == [D("-839.76967"), D("-294.02804")]
    pos = Position.objects.get(account=account)
    assert pos.size == D("300000") and pos.cost_basis == D("24718.0172")
    audit_clean()


def test_market_buy_by_amount_spends_at_most_the_amount_fee_included(ws_book):
    _market, yes, _ = make_market(fees_enabled=True, fee_rate=D("0.05"), fee_exponent=D("1"))
    publish_snapshot(ws_book, token_id=yes.token_id)
    account = open_account("1000")

    placed = buy(account, yes, type="market", amount="100")

    # Per share at 0.08: 0.08 + 0.05 × 0.0736 = 0.08368; 100 / 0.08368 = 1195.0286… → 1195.02
    # 1195.03 would cost 95.6024 + floor5(4.3977104) = 100.00011 > 100: not taken.
    # 1195.02 costs 1195.02 × 0.08 = 95.6016 + floor5(1195.02 × 0.00368 = 4.3976736)
    #   = 95.6016 + 4.39767 = 99.99927 ≤ 100.
    (fill,) = placed.fills
    assert (fill.price, fill.size, fill.notional, fill.fee) == (
        D("0.08"),
        D("1195.02"),
        D("95.6016"),
        D("4.39767"),
    )
    assert placed.order.status == "matched" and placed.order.amount == D("100")
    assert Account.objects.get(pk=account.pk).cash == D("1000") - D("99.99927")
    audit_clean()


def test_market_sell_on_the_recorded_empty_ask_book(shared_dir):
    """nt_clob_book_empty_ask_2026-08-03: bids 0.002 × 6.99 and 0.001 × 667.12, no asks,
    tick 0.001; no fees. No mid (one-sided book) → mid_gap is null."""
    rest = load(shared_dir, "clob/nt_clob_book_empty_ask_2026-08-03.json")
    _market, yes, _ = make_market(tick_size=D("0.001"))
    account = open_account("100")
    # Get shares first on a synthetic ask, then the recorded book arrives.
    publish_book(yes.token_id, asks=[("0.003", "1000")], tick_size="0.001")
    buy(account, yes, price="0.003", size="500")
    publish_snapshot(rest, token_id=yes.token_id)

    with pytest.raises(errors.FokOrderNotFilledError):  # no asks: no book → no fill
        buy(account, yes, type="market", amount="1")

    placed = order_place(
        account_id=account.pk, token_id=yes.token_id, side="SELL", type="market", size="100"
    )
    # 6.99 @ 0.002 = 0.01398; 93.01 @ 0.001 = 0.09301; total 0.10699 for 100 shares
    # VWAP 0.0010699 → 0.001070 (6 dp, half even); realized vs avg 0.003:
    #   (0.002 − 0.003) × 6.99 = −0.00699; (0.001 − 0.003) × 93.01 = −0.18602
    assert [(f.price, f.size) for f in placed.fills] == [
        (D("0.002"), D("6.99")),
        (D("0.001"), D("93.01")),
    ]
    assert sum(f.notional for f in placed.fills) == D("0.10699")
    assert [f.realized_pnl for f in placed.fills] == [D("-0.00699"), D("-0.18602")]
    assert all(f.vwap == D("0.001070") and f.mid_gap is None for f in placed.fills)
    assert all(f.fee == 0 for f in placed.fills)
    audit_clean()


def test_only_the_tokens_own_book_is_walked():
    """Polymarket mirrors a NO bid at 0.40 as a YES ask at 0.60: the YES book already holds
    it. Walking the complement book too would count it twice."""
    _market, yes, no = make_market()
    publish_book(yes.token_id, asks=[("0.60", "100")], bids=[("0.55", "50")])
    publish_book(no.token_id, bids=[("0.40", "100"), ("0.39", "500")], asks=[("0.45", "50")])
    account = open_account("1000")
    with pytest.raises(errors.FokOrderNotFilledError):
        buy(account, yes, price="0.61", size="150", time_in_force="FOK")
    placed = buy(account, yes, price="0.61", size="150", time_in_force="FAK")
    assert placed.order.filled_size == D("100")


# --- depletion ---------------------------------------------------------------------------
def _depletion_scenario():
    _market, yes, _ = make_market()
    publish_book(yes.token_id, asks=[("0.50", "100"), ("0.60", "100")])
    a, b, c = open_account(), open_account(), open_account()

    first = buy(a, yes, price="0.50", size="60", time_in_force="FOK")
    assert first.order.filled_size == D("60")
    # Same book update: only 40 are left at 0.50 for anyone else.
    with pytest.raises(errors.FokOrderNotFilledError):
        buy(b, yes, price="0.50", size="60", time_in_force="FOK")
    second = buy(b, yes, price="0.50", size="60", time_in_force="FAK")
    assert second.order.filled_size == D("40")
    third = buy(c, yes, price="0.50", size="10", time_in_force="FAK")
    assert third.order.filled_size == 0 and third.order.status == "canceled"
    # The feed republishes the level unchanged: still depleted.
    publish_book(yes.token_id, asks=[("0.50", "100"), ("0.60", "100")])
    assert buy(c, yes, price="0.50", size="10", time_in_force="FAK").order.filled_size == 0
    # The level changes on the feed (someone traded 10 there): the memory resets.
    publish_book(yes.token_id, asks=[("0.50", "90"), ("0.60", "100")])
    assert buy(c, yes, price="0.50", size="90", time_in_force="FOK").order.filled_size == D("90")
    # 0.60 was never touched: a market BUY walks past the empty 0.50 to it.
    placed = buy(a, yes, type="market", amount="6")
    assert [(f.price, f.size) for f in placed.fills] == [(D("0.6"), D("10"))]
    audit_clean()


def test_depletion_on_redis(redis_url):
    _depletion_scenario()
    import redis

    keys = redis.Redis.from_url(redis_url).keys("dep:*")
    assert keys  # the memory lives in Redis, shared by every process


def test_redis_depletion_commit_and_get(redis_url):
    # The maker fill's one round trip: its takes set (compare-and-set, as `commit`), and
    # other keys of the same Redis read (its positions' marks on the price bus).
    import redis

    from trading.depletion import RedisDepletion, Take

    store = RedisDepletion.from_url(redis_url)
    client = redis.Redis.from_url(redis_url)
    client.set("other", b"x")
    key = "dep:t:asks:0.5"
    take = Take(key, "", D("100"), D("0"), D("4"))
    assert store.commit_and_get([take], ["other", "nope"]) == (True, ["x", None])
    assert store.read([key]) == ["100|4"]
    # What was read is no longer there: nothing is set; the other keys are still read.
    assert store.commit_and_get([take], ["other"]) == (False, ["x"])
    assert store.read([key]) == ["100|4"]
    # The server lost its scripts (a restart, SCRIPT FLUSH): loaded again and sent again.
    client.script_flush()
    more = Take(key, "100|4", D("100"), D("4"), D("1"))
    assert store.commit_and_get([more], []) == (True, [])
    assert store.read([key]) == ["100|5"]
    assert store.commit_and_get([], ["other"]) == (True, ["x"])
    assert store.commit_and_get([], []) == (True, [])


# --- the pure model ----------------------------------------------------------------------
def test_fee_formula_floors_to_5_decimals():
    # 10 × 0.25 × (0.5 × 0.5)^2 = 10 × 0.25 × 0.0625 = 0.15625 exactly
    assert taker_fee(size=D("10"), price=D("0.5"), rate=D("0.25"), exponent=D("2")) == D("0.15625")
    # 3 × 0.05 × (0.33 × 0.67) = 0.15 × 0.2211 = 0.033165 → 0.03316
    assert taker_fee(size=D("3"), price=D("0.33"), rate=D("0.05"), exponent=D("1")) == D("0.03316")
    assert taker_fee(size=D("3"), price=D("0.33"), rate=D("0"), exponent=D("1")) == 0


def test_buy_reservation_covers_the_worst_fee():
    # limit 0.70 × 100 = 70; worst fee at p = 0.5: 100 × 0.05 × 0.25 = 1.25
    assert buy_reservation(price=D("0.7"), size=D("100"), rate=D("0.05"), exponent=D("1")) == D(
        "71.25"
    )
    # limit 0.20: fee peaks at the limit itself: 100 × 0.05 × 0.16 = 0.8
    assert buy_reservation(price=D("0.2"), size=D("100"), rate=D("0.05"), exponent=D("1")) == D(
        "20.8"
    )


def test_walk_never_passes_the_limit():
    levels = [(D("0.5"), D("10"), D("10")), (D("0.51"), D("10"), D("10"))]
    walk = walk_book(side="BUY", levels=levels, limit=D("0.5"), size=D("15"))
    assert walk.filled == D("10") and not walk.complete
    sell = walk_book(
        side="SELL",
        levels=[(D("0.5"), D("10"), D("4")), (D("0.49"), D("10"), D("10"))],
        limit=D("0.49"),
        size=D("12"),
    )
    assert [(t.price, t.size) for t in sell.takes] == [(D("0.5"), D("4")), (D("0.49"), D("8"))]
    assert sell.complete


def test_an_amount_too_small_for_one_hundredth_is_not_complete():
    """Regression (found by test_engine_state_machine): an amount that cannot buy even 0.01
    share filled nothing, yet the walk said complete, so the order was `matched` with no
    fills. Nothing filled is never complete; leftover change after real fills still is."""
    levels = [(D("0.5"), D("100"), D("100"))]
    tiny = walk_book(side="BUY", levels=levels, limit=D("0.99"), amount=D("0.004"))
    assert tiny.takes == [] and not tiny.complete
    exhausted = walk_book(
        side="BUY", levels=[(D("0.5"), D("100"), D("0"))], limit=D("0.99"), amount=D("0.004")
    )
    assert exhausted.takes == [] and not exhausted.complete
    change = walk_book(side="BUY", levels=levels, limit=D("0.99"), amount=D("1.004"))
    assert change.filled == D("2") and change.complete  # 0.004 left: less than a hundredth


@pytest.mark.parametrize(
    ("tif", "outcome"), [("FOK", "FOK_ORDER_NOT_FILLED_ERROR"), ("FAK", "canceled")]
)
def test_market_buy_too_small_to_fill_is_not_matched(tif, outcome):
    _m, yes, _no = make_market()
    publish_book(yes.token_id, asks=[("0.50", "100")], bids=[("0.48", "100")])
    account = open_account("1000")
    try:
        placed = order_place(account_id=account.pk, token_id=yes.token_id, side="BUY",
                             type="market", amount="0.004", time_in_force=tif)  # fmt: skip
        got = placed.order.status
        assert placed.fills == [] and placed.order.reason == "FAK_REMAINDER"
    except errors.DomainError as exc:
        got = exc.code
    assert got == outcome
    assert Account.objects.get(pk=account.pk).cash == D("1000")
    audit_clean(account)
