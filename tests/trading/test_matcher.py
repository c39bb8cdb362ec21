"""Maker fills (docs/engine-rules.md §4): resting orders filled by the matcher at their own limit
price, as maker, without fee — when the opposite best crosses them (size shown less
depletion, shared with taker orders) and when trades print through them (queue-position rule
at exactly their price). Driven through the real interfaces: orders placed with
`order_place`, books and trades PUBLISHED on the price bus, the matcher stepping its
consumer group; every scenario ends with a clean ledger audit."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from decimal import Decimal as D

import pytest
from django.db import connection
from django.test import TestCase

from accounts.models import Account, EquitySnapshot, LedgerEntry, Position
from marketdata.book import OrderBook
from marketdata.bus import BookTop, BusMessage, get_bus
from tests.runtime import child_env
from tests.trading.conftest import (
    audit_clean,
    feed_dead,
    make_market,
    open_account,
    publish_book,
    publish_trade,
)
from trading.fillmodel import buy_reservation
from trading.matcher import Matcher, parse_shard
from trading.models import Fill
from trading.orderevents import get_order_events
from trading.resting import Resting, RestingIndex
from trading.services import order_cancel, order_place

pytestmark = pytest.mark.django_db


def committed(fn, *args, **kwargs):
    """Call a service as production does: outside a transactional test the test's
    transaction never commits, so run its on-commit hooks (the order events) as it returns
    — which is when they run in production (the services commit before returning)."""
    with TestCase.captureOnCommitCallbacks(execute=True):
        return fn(*args, **kwargs)


_matchers: list[Matcher] = []


@pytest.fixture(autouse=True)
def _close_matchers():
    """Every matcher a test made stops its worker threads (and their DB connections)."""
    yield
    while _matchers:
        _matchers.pop().close()


def new_matcher(**kw) -> Matcher:
    bus = get_bus()
    m = Matcher(
        bus=bus,
        events=get_order_events(),
        shards=range(bus.n_shards),
        reconcile_seconds=3600,
        claim_idle_ms=3_600_000,
        **kw,
    )
    _matchers.append(m)
    m.start()
    return m


def place(account, token, side, price, size, **kw):
    kw.setdefault("type", "limit")
    return committed(
        order_place,
        account_id=account.pk,
        token_id=token.token_id,
        side=side,
        price=price,
        size=size,
        **kw,
    ).order


def maker_fills(order) -> list[Fill]:
    return list(Fill.objects.filter(order=order).order_by("seq"))


def refreshed(obj):
    obj.refresh_from_db()
    return obj


@pytest.fixture
def book():
    """A market whose YES book is 0.48 bid / 0.52 ask, and a matcher already consuming."""
    _market, yes, _ = make_market()
    publish_book(yes.token_id, bids=[("0.48", "100")], asks=[("0.52", "100")])
    return yes


# --- crossing -------------------------------------------------------------------------------
def test_partial_fill_at_own_limit_price_as_maker_without_fee():
    # Fees on: a taker would pay, the maker pays nothing, and the fee cushion the BUY
    # reserved is given back in proportion.
    _m, yes, _ = make_market(fees_enabled=True, fee_rate=D("0.05"), fee_exponent=D("1"))
    publish_book(yes.token_id, bids=[("0.48", "100")], asks=[("0.52", "100")])
    account = open_account("100")
    matcher = new_matcher()
    order = place(account, yes, "BUY", "0.50", "10")
    reserved = buy_reservation(price=D("0.50"), size=D("10"), rate=D("0.05"), exponent=D("1"))
    assert refreshed(order).reserved_cash == reserved == D("5.125")

    publish_book(yes.token_id, bids=[("0.48", "100")], asks=[("0.49", "4"), ("0.52", "100")])
    assert matcher.step() == 1

    (fill,) = maker_fills(order)
    # At the order's own 0.50, not the book's 0.49.
    assert (fill.price, fill.size, fill.notional, fill.fee) == (D("0.50"), D("4"), D("2"), 0)
    assert fill.liquidity == "maker" and fill.price_source == "book"
    assert fill.levels == [["0.49", "4.00"]] and fill.trigger_key.startswith("m")
    order = refreshed(order)
    assert order.status == "live" and order.filled_size == D("4")
    # 6 left: 3.00 notional + 6/10 of the 0.125 cushion.
    assert order.reserved_cash == D("3.075")
    a = Account.objects.get(pk=account.pk)
    assert a.cash == D("98") and a.reserved_cash == D("3.075") and a.fees_paid == 0
    assert not LedgerEntry.objects.filter(account=account, kind="FEE").exists()
    pos = Position.objects.get(account=account, token_id=yes.token_id)
    assert (pos.size, pos.avg_price) == (D("4"), D("0.5"))
    audit_clean()


def test_full_fill_releases_the_whole_reservation(book):
    account = open_account("100")
    matcher = new_matcher()
    order = place(account, book, "BUY", "0.50", "10")
    publish_book(book.token_id, bids=[("0.48", "100")], asks=[("0.45", "50")])
    matcher.step()
    order = refreshed(order)
    assert order.status == "matched" and order.reserved_cash == 0
    assert [f.size for f in maker_fills(order)] == [D("10")]
    a = Account.objects.get(pk=account.pk)
    assert (a.cash, a.reserved_cash) == (D("95"), 0)
    assert len(matcher.index) == 0
    audit_clean()


def test_resting_sell_fills_when_the_bid_rises_and_realizes_pnl(book):
    account = open_account("100")
    place(account, book, "BUY", "0.52", "10")  # taker at entry: 10 @ 0.52
    matcher = new_matcher()
    sell = place(account, book, "SELL", "0.60", "10")
    pos = Position.objects.get(account=account, token_id=book.token_id)
    assert pos.reserved_size == D("10")
    publish_book(book.token_id, bids=[("0.61", "6")], asks=[("0.65", "100")])
    matcher.step()
    (fill,) = maker_fills(sell)
    assert (fill.side, fill.price, fill.size, fill.fee) == ("SELL", D("0.60"), D("6"), 0)
    assert fill.realized_pnl == D("0.48")  # (0.60 − 0.52) × 6
    pos = refreshed(pos)
    assert (pos.size, pos.reserved_size) == (D("4"), D("4"))
    assert refreshed(sell).reserved_shares == D("4")
    audit_clean()


def test_price_then_time_priority_and_depletion_across_orders(book):
    a1, a2, a3 = open_account("100"), open_account("100"), open_account("100")
    matcher = new_matcher()
    first = place(a1, book, "BUY", "0.50", "10")
    better = place(a2, book, "BUY", "0.51", "10")
    later = place(a3, book, "BUY", "0.50", "10")

    publish_book(book.token_id, bids=[("0.48", "100")], asks=[("0.49", "15")])
    matcher.step()
    # 0.51 first (price), then the older 0.50 (time); 15 shown shares, no more.
    assert [f.size for f in maker_fills(better)] == [D("10")]
    assert [f.size for f in maker_fills(first)] == [D("5")]
    assert maker_fills(later) == []

    # The same level again (the bid side moved): its 15 shares are spent.
    publish_book(book.token_id, bids=[("0.47", "100")], asks=[("0.49", "15")])
    matcher.step()
    assert Fill.objects.count() == 2

    # The feed shows a new size at 0.49: the level is whole again.
    publish_book(book.token_id, bids=[("0.47", "100")], asks=[("0.49", "20")])
    matcher.step()
    assert [f.size for f in maker_fills(first)] == [D("5"), D("5")]
    assert [f.size for f in maker_fills(later)] == [D("10")]
    audit_clean()


def test_depletion_is_shared_with_a_taker_order(book):
    maker_acc, taker_acc = open_account("100"), open_account("100")
    matcher = new_matcher()
    resting = place(maker_acc, book, "BUY", "0.50", "10")
    publish_book(book.token_id, bids=[("0.48", "100")], asks=[("0.49", "10")])
    # A taker takes 6 of the 10 shown before the matcher gets to the update.
    taker = place(taker_acc, book, "BUY", "0.49", "6", time_in_force="FAK")
    assert refreshed(taker).filled_size == D("6")
    matcher.step()
    assert [f.size for f in maker_fills(resting)] == [D("4")]
    audit_clean()


def test_a_depletion_record_of_another_size_does_not_hold_back_a_maker_fill(book):
    # A taker took from 0.49 while it showed 10; the feed now shows 8 there: the memory
    # resets (all 8 available), though its record is still stored under that level.
    maker_acc, taker_acc = open_account("100"), open_account("100")
    matcher = new_matcher()
    resting = place(maker_acc, book, "BUY", "0.50", "10")
    publish_book(book.token_id, bids=[("0.48", "100")], asks=[("0.49", "10")])
    taker = place(taker_acc, book, "BUY", "0.49", "6", time_in_force="FAK")
    assert refreshed(taker).filled_size == D("6")
    matcher.step()
    publish_book(book.token_id, bids=[("0.48", "100")], asks=[("0.49", "8")])
    matcher.step()
    assert [f.size for f in maker_fills(resting)] == [D("4"), D("6")]
    audit_clean()


def test_the_equity_snapshot_of_a_maker_fill_values_every_open_position():
    # Hand-computed: marks are the midpoint (spread ≤ 0.10), else the position's cost.
    (_, a, _), (_, b, _), (_, c, _) = make_market(), make_market(), make_market()
    publish_book(a.token_id, bids=[("0.39", "100")], asks=[("0.40", "100")])
    publish_book(b.token_id, bids=[("0.59", "100")], asks=[("0.60", "100")])
    publish_book(c.token_id, bids=[("0.48", "100")], asks=[("0.52", "100")])
    account = open_account("100")
    place(account, a, "BUY", "0.40", "10")  # takers at entry: 4.00 and 6.00
    place(account, b, "BUY", "0.60", "10")
    matcher = new_matcher()
    resting = place(account, c, "BUY", "0.50", "10")
    sell_a = place(account, a, "SELL", "0.50", "10")
    publish_book(a.token_id, bids=[("0.44", "100")], asks=[("0.46", "100")])  # mid 0.45
    publish_book(b.token_id, bids=[("0.60", "100")], asks=[("0.90", "100")])  # too wide
    publish_book(c.token_id, bids=[("0.48", "100")], asks=[("0.49", "4")])  # mid 0.485
    matcher.step()
    assert [f.size for f in maker_fills(resting)] == [D("4")]
    snap = EquitySnapshot.objects.filter(account=account).latest("at", "id")
    # cash 100 − 4 − 6 − 2 = 88; A 10 × 0.45, B 10 × 0.60 (cost), C 4 × 0.485.
    assert (snap.cash, snap.positions_value, snap.equity) == (D("88"), D("12.44"), D("100.44"))

    # A SELL that empties a position: it no longer counts; the others at their marks now.
    publish_book(a.token_id, bids=[("0.51", "10")], asks=[("0.53", "100")])
    matcher.step()
    assert [f.size for f in maker_fills(sell_a)] == [D("10")]
    snap = EquitySnapshot.objects.filter(account=account).latest("at", "id")
    assert (snap.cash, snap.positions_value, snap.equity) == (D("93"), D("7.94"), D("100.94"))
    audit_clean()


def test_the_engine_values_positions_at_their_marks():
    # The equity snapshot of every fill values the positions as the envelope shows them:
    # the book's mark, else the stored mark, else cost (hand-computed on the right).
    from trading.engine import PositionState, holdings_value
    from trading.selectors import MarkedPosition, PositionRow, position_mark

    def top(token, bids, asks, last=None):
        t = BookTop.from_book(
            OrderBook.from_snapshot(
                {
                    "market": "0xcond",
                    "asset_id": token,
                    "timestamp": "1",
                    "hash": "h",
                    "bids": [{"price": p, "size": "10"} for p in bids],
                    "asks": [{"price": p, "size": "10"} for p in asks],
                    "tick_size": "0.01",
                }
            )
        )
        return replace(t, last_trade_price=last)

    tops = {
        "mid": top("mid", ["0.40"], ["0.44"]),  # 0.42
        "wide": top("wide", ["0.30"], ["0.60"], last="0.55"),  # last trade 0.55
        "wide_no_trade": top("wide_no_trade", ["0.30"], ["0.60"]),  # cost 0.50
        "one_side": top("one_side", ["0.30"], [], last="0.35"),  # last trade 0.35
        "empty": top("empty", [], []),  # stored mark 0.20
    }
    held = [
        PositionState(1, "mid", size=D("10"), avg_price=D("0.5"), cost_basis=D("5")),
        PositionState(2, "wide", size=D("3"), avg_price=D("0.5"), cost_basis=D("1.5")),
        PositionState(3, "wide_no_trade", size=D("7.5"), avg_price=D("0.5"),
                      cost_basis=D("3.75")),
        PositionState(4, "one_side", size=D("1"), avg_price=D("0.5"), cost_basis=D("0.5")),
        PositionState(5, "empty", size=D("2"), avg_price=D("0.5"), cost_basis=D("1"),
                      last_mark=D("0.2")),
        PositionState(6, "no_top", size=D("4"), avg_price=D("0.123456"), cost_basis=D("0.49")),
        PositionState(7, "sold", size=D("0"), avg_price=D("0"), cost_basis=D("0")),
    ]  # fmt: skip
    expected = D("4.2") + D("1.65") + D("3.75") + D("0.35") + D("0.4") + D("0.493824")
    assert holdings_value(held, tops) == expected
    rows = [
        PositionRow(h.token_id, "", "", "", h.size, h.avg_price, h.cost_basis, h.last_mark, None)
        for h in held
    ]
    shown = [MarkedPosition(r, position_mark(r, tops.get(r.token_id))) for r in rows]
    assert sum(m.market_value for m in shown) == expected


def test_no_fill_without_a_cross_and_none_on_stale_books_or_a_dead_feed(book):
    account = open_account("100")
    matcher = new_matcher()
    order = place(account, book, "BUY", "0.50", "10")
    publish_book(book.token_id, bids=[("0.49", "100")], asks=[("0.51", "100")])
    publish_book(book.token_id, bids=[("0.48", "100")], asks=[("0.49", "100")], fresh=False)
    matcher.step()
    assert maker_fills(order) == [] and matcher.stats.stale_skipped == 1

    publish_book(book.token_id, bids=[("0.48", "100")], asks=[("0.49", "100")])
    feed_dead(book.token_id)  # the shard's feed stopped beating after publishing
    matcher.step()
    assert maker_fills(order) == []
    audit_clean()


def test_a_book_older_than_the_order_never_fills_it(book):
    account = open_account("100")
    matcher = new_matcher()
    # A crossing book published (and not yet processed), then the liquidity vanished and a
    # BUY at 0.50 rested: the old book must not fill it.
    publish_book(book.token_id, bids=[("0.48", "100")], asks=[("0.49", "100")])
    publish_book(book.token_id, bids=[("0.48", "100")], asks=[("0.52", "100")])
    # The matcher compares whole milliseconds (a book of the order's own millisecond counts
    # as not older): the order comes in a later one, as the scenario says.
    time.sleep(0.002)
    order = place(account, book, "BUY", "0.50", "10", post_only=True)
    matcher.step()
    assert maker_fills(order) == []


# --- trades -----------------------------------------------------------------------------------
def test_trade_through_fills_up_to_the_trade_size(book):
    account = open_account("100")
    matcher = new_matcher()
    order = place(account, book, "BUY", "0.50", "10")
    publish_trade(book.token_id, price="0.47", size="3", side="SELL")
    matcher.step()
    (fill,) = maker_fills(order)
    assert (fill.price, fill.size, fill.fee, fill.price_source) == (D("0.50"), D("3"), 0, "trade")
    # A BUY taker lifting asks does not go through our bid.
    publish_trade(book.token_id, price="0.47", size="3", side="BUY")
    matcher.step()
    assert len(maker_fills(order)) == 1
    audit_clean()


def test_trade_size_is_shared_in_price_time_priority(book):
    a1, a2 = open_account("100"), open_account("100")
    matcher = new_matcher()
    low = place(a1, book, "BUY", "0.49", "10")
    high = place(a2, book, "BUY", "0.50", "10")
    publish_trade(book.token_id, price="0.45", size="12", side="SELL")
    matcher.step()
    assert [f.size for f in maker_fills(high)] == [D("10")]
    assert [f.size for f in maker_fills(low)] == [D("2")]
    audit_clean()


def test_trade_at_the_price_fills_only_after_the_queue_ahead_traded(book):
    account = open_account("100")
    publish_book(book.token_id, bids=[("0.50", "100"), ("0.48", "5")], asks=[("0.52", "100")])
    matcher = new_matcher()
    order = place(account, book, "BUY", "0.50", "30")
    assert refreshed(order).queue_ahead == D("100")

    publish_trade(book.token_id, price="0.50", size="60", side="SELL")
    matcher.step()
    assert maker_fills(order) == []
    assert refreshed(order).queue_ahead == D("40")

    publish_trade(book.token_id, price="0.50", size="50", side="SELL")
    matcher.step()
    (fill,) = maker_fills(order)
    assert fill.size == D("10")  # 50 traded, 40 of it ahead of us
    order = refreshed(order)
    assert order.queue_ahead == 0 and order.filled_size == D("10")

    publish_trade(book.token_id, price="0.50", size="25", side="SELL")
    matcher.step()
    assert [f.size for f in maker_fills(order)] == [D("10"), D("20")]
    assert refreshed(order).status == "matched"
    audit_clean()


def test_an_order_at_a_new_best_price_has_no_queue_ahead(book):
    account = open_account("100")
    matcher = new_matcher()
    order = place(account, book, "BUY", "0.50", "10")
    assert refreshed(order).queue_ahead == 0
    publish_trade(book.token_id, price="0.50", size="4", side="SELL")
    matcher.step()
    assert [f.size for f in maker_fills(order)] == [D("4")]


def test_queue_advance_is_not_counted_twice_on_replay(book):
    account = open_account("100")
    publish_book(book.token_id, bids=[("0.50", "100")], asks=[("0.52", "100")])
    matcher = new_matcher()
    order = place(account, book, "BUY", "0.50", "10")
    publish_trade(book.token_id, price="0.50", size="60", side="SELL")
    bus = get_bus()
    msgs = bus.read(0, matcher.group, matcher.consumer)
    matcher._process(0, msgs)
    # Same entry again (as after a crash before the ack), from a fresh matcher's index.
    again = new_matcher()
    again._process(0, [BusMessage(msgs[0].id, msgs[0].tops, msgs[0].trades)])
    assert refreshed(order).queue_ahead == D("40")


# --- exactly once -----------------------------------------------------------------------------
def test_replayed_entry_fills_once(book, monkeypatch):
    account = open_account("100")
    matcher = new_matcher(consumer="m-1")
    order = place(account, book, "BUY", "0.50", "10")
    publish_book(book.token_id, bids=[("0.48", "100")], asks=[("0.49", "4")])
    bus = get_bus()

    # The matcher commits the fill and dies before acknowledging the entry.
    def crash(*args, **kwargs):
        raise RuntimeError("killed before XACK")

    monkeypatch.setattr(bus, "ack", crash)
    with pytest.raises(RuntimeError):
        matcher.step()
    monkeypatch.undo()
    assert bus.pending_count(0, matcher.group) == 1
    assert len(maker_fills(order)) == 1

    # Restarted under the same name, it re-reads its pending entry: no second fill, acked.
    restarted = new_matcher(consumer="m-1")
    assert restarted.stats.duplicates == 1
    assert bus.pending_count(0, restarted.group) == 0
    assert [f.size for f in maker_fills(order)] == [D("4")]
    # Claimed by another consumer after the idle time: still once.
    assert Fill.objects.count() == 1
    audit_clean()


def test_entries_of_a_dead_consumer_are_claimed(book, monkeypatch):
    account = open_account("100")
    dead = new_matcher(consumer="dead")
    order = place(account, book, "BUY", "0.50", "10")
    publish_book(book.token_id, bids=[("0.48", "100")], asks=[("0.49", "4")])
    bus = get_bus()
    bus.read(0, dead.group, "dead")  # delivered to it, never processed
    other = Matcher(
        bus=bus, events=get_order_events(), shards=[0], consumer="other", claim_idle_ms=0
    )
    other.start()
    assert [f.size for f in maker_fills(order)] == [D("4")]
    assert bus.pending_count(0, other.group) == 0


# --- the index ----------------------------------------------------------------------------
def test_cancel_and_new_orders_reach_the_index_through_events(book):
    account = open_account("100")
    matcher = new_matcher()
    order = place(account, book, "BUY", "0.50", "10")
    matcher.drain_events()
    assert matcher.index.get(str(order.pk)) is not None
    committed(order_cancel, account_id=account.pk, order_id=order.pk)
    matcher.drain_events()
    assert matcher.index.get(str(order.pk)) is None
    assert len(matcher.index) == 0


def test_reconcile_catches_an_order_whose_event_was_lost(book, monkeypatch):
    account = open_account("100")
    matcher = new_matcher()
    monkeypatch.setattr(get_order_events(), "publish", lambda events: None)
    order = place(account, book, "BUY", "0.50", "10")
    matcher.drain_events()
    assert matcher.index.get(str(order.pk)) is None
    matcher.reconcile()
    assert matcher.index.get(str(order.pk)) is not None
    publish_book(book.token_id, bids=[("0.48", "100")], asks=[("0.49", "3")])
    matcher.step()
    assert [f.size for f in maker_fills(order)] == [D("3")]


def test_an_order_whose_event_comes_after_a_crossing_book_is_matched_against_it(book):
    account = open_account("100")
    matcher = new_matcher()
    events = get_order_events()
    held: list = []
    real = events.publish
    events.publish = held.extend  # type: ignore[method-assign]
    order = place(account, book, "BUY", "0.50", "10", post_only=True)
    # The book crosses right after the order committed, before its event is out.
    publish_book(book.token_id, bids=[("0.48", "100")], asks=[("0.49", "7")])
    matcher.step()
    assert maker_fills(order) == []
    real(held)  # the late event
    matcher.drain_events()
    assert [f.size for f in maker_fills(order)] == [D("7")]
    audit_clean()


def test_index_orders_by_price_then_time():
    idx = RestingIndex()

    def r(oid, side, price, ms):
        return Resting(oid, "a", "t", side, D(price), D("1"), ms, D("0"))

    for o in [
        r("b1", "BUY", "0.50", 2),
        r("b2", "BUY", "0.52", 3),
        r("b3", "BUY", "0.50", 1),
        r("b4", "BUY", "0.40", 0),
        r("s1", "SELL", "0.60", 5),
        r("s2", "SELL", "0.55", 6),
    ]:
        idx.upsert(o)
    assert [o.order_id for o in idx.crossing("t", "BUY", D("0.50"))] == ["b2", "b3", "b1"]
    assert [o.order_id for o in idx.crossing("t", "SELL", D("0.60"))] == ["s2", "s1"]
    assert idx.crossing("t", "SELL", D("0.54")) == []
    idx.remove("b2")
    idx.remove("b3")
    idx.remove("b1")
    assert [o.order_id for o in idx.crossing("t", "BUY", D("0.30"))] == ["b4"]
    assert len(idx) == 3


def test_index_reaches_exactly_when_crossing_finds_orders():
    # The reader's cheap test (two lookups) must agree with the full crossing walk, or it
    # would skip a top that fills something (or decode ones that fill nothing).
    idx = RestingIndex()
    for oid, side, price in [("b1", "BUY", "0.40"), ("b2", "BUY", "0.45"), ("s1", "SELL", "0.60")]:
        idx.upsert(Resting(oid, "a", "t", side, D(price), D("1"), 0, D("0")))
    idx.upsert(Resting("x", "a", "only-buys", "BUY", D("0.30"), D("1"), 0, D("0")))
    prices = [None, *(D(p) / 100 for p in range(25, 70))]
    for token in ("t", "only-buys", "nothing"):
        for bid in prices:
            for ask in prices:
                expected = bool(
                    (ask is not None and idx.crossing(token, "BUY", ask))
                    or (bid is not None and idx.crossing(token, "SELL", bid))
                )
                assert idx.reaches(token, bid, ask) is expected, (token, bid, ask)


def test_fill_rows_with_quotes_and_percent_signs_in_one_round_trip(book):
    # The values are bound (PostgreSQL: by the server, in one statement of every write):
    # text that looks like placeholders or needs quoting is written as it is.
    _m, yes, _ = make_market(question="50% 'odds' %s or %(x)s? \\ done")
    publish_book(yes.token_id, bids=[("0.48", "100")], asks=[("0.52", "100")])
    account = open_account("100")
    matcher = new_matcher()
    order = place(account, yes, "BUY", "0.50", "10")
    publish_book(yes.token_id, bids=[("0.48", "100")], asks=[("0.49", "4"), ("0.52", "100")])
    matcher.step()
    (fill,) = maker_fills(order)
    assert fill.market_question == "50% 'odds' %s or %(x)s? \\ done"
    entry = LedgerEntry.objects.get(account=account, kind="TRADE")
    assert (entry.memo, entry.amount) == ("BUY 4.00 @ 0.500000 (maker)", D("-2"))
    audit_clean()


def test_parse_shard():
    assert parse_shard("1/4", 4) == ([1], 4)
    assert parse_shard(None, 3) == ([0, 1, 2], 3)
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(ValueError):
            parse_shard(bad, 4)


# --- concurrency (Postgres) -------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_cancel_racing_a_fill_never_both(book):
    """Many resting orders, each cancelled by one thread while the matcher fills them in
    another: every order ends either cancelled with nothing filled and all released, or
    filled (matched) and not cancelled — and the ledger balances."""
    accounts = [open_account("100") for _ in range(12)]
    matcher = new_matcher()
    orders = [place(a, book, "BUY", "0.50", "10") for a in accounts]
    matcher.drain_events()
    publish_book(book.token_id, bids=[("0.48", "100")], asks=[("0.49", "1000")])
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def cancel_all() -> None:
        try:
            barrier.wait()
            for a, o in zip(reversed(accounts), reversed(orders), strict=True):
                try:
                    order_cancel(account_id=a.pk, order_id=o.pk)
                except Exception as exc:  # ILLEGAL_TRANSITION once matched is expected
                    if getattr(exc, "code", "") != "ILLEGAL_TRANSITION":
                        raise
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    def match() -> None:
        try:
            barrier.wait()
            matcher.step()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=cancel_all), threading.Thread(target=match)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    statuses = {}
    for o in orders:
        o.refresh_from_db()
        statuses[o.status] = statuses.get(o.status, 0) + 1
        fills = maker_fills(o)
        if o.status == "canceled":
            assert fills == [] and o.reserved_cash == 0
        else:
            assert o.status == "matched" and [f.size for f in fills] == [D("10")]
    assert set(statuses) <= {"canceled", "matched"}
    audit_clean()


@pytest.mark.django_db(transaction=True)
def test_fills_of_many_tokens_run_on_workers_each_token_in_priority_order():
    """One bus entry crossing orders on several tokens, some accounts resting on two of
    them: the workers fill them in parallel (never two at once for one account), each
    token's orders in price-time priority against its depleted levels, every fill
    committed and the entry acknowledged when step() returns; fill numbers stay gap-free
    per account and the ledger balances."""
    tokens = [make_market()[1] for _ in range(6)]
    accounts = [open_account("100") for _ in range(4)]
    for t in tokens:
        publish_book(t.token_id, bids=[("0.40", "100")], asks=[("0.60", "100")])
    matcher = new_matcher(workers=4)
    orders = {}
    for n, t in enumerate(tokens):
        a, b = accounts[n % 4], accounts[(n + 1) % 4]
        # Older 0.50, then a better 0.51 and a later 0.51: priority 0.51 (older), 0.51, 0.50.
        orders[t.token_id] = [
            place(a, t, "BUY", "0.50", "10"),
            place(b, t, "BUY", "0.51", "10"),
            place(a, t, "BUY", "0.51", "10"),
        ]
    matcher.drain_events()
    for t in tokens:  # 15 shares shown at 0.49: the two 0.51 orders fill 10 + 5
        publish_book(t.token_id, bids=[("0.40", "100")], asks=[("0.49", "15"), ("0.60", "100")])
    assert matcher.step() == len(tokens) and matcher._pool is not None
    assert get_bus().pending_count(0, matcher.group) == 0
    for t in tokens:
        worse, first, second = (refreshed(o) for o in orders[t.token_id])
        assert (first.filled_size, second.filled_size, worse.filled_size) == (
            D("10"),
            D("5"),
            D("0"),
        )
    for a in accounts:
        seqs = list(Fill.objects.filter(account=a).order_by("seq").values_list("seq", flat=True))
        assert seqs == list(range(1, len(seqs) + 1)) and seqs
    assert matcher.stats.fills == 2 * len(tokens)
    audit_clean()


# --- the process, on the real services ------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_trading_match_command_fills_from_the_redis_bus(tmp_path):
    """`manage.py trading match` as its own process on Redis + Postgres: a resting order,
    then a crossing book and a trade print published on the RedisBus; the fills commit
    within a bounded wait, SIGTERM stops it cleanly, and the audit is clean."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from marketdata.bus import TradePrint, now_ms

    bus = get_bus()
    bus.heartbeat(0)
    _m, yes, _ = make_market()
    publish_book(yes.token_id, bids=[("0.48", "100")], asks=[("0.52", "100")])
    account = open_account("100")
    resting = place(account, yes, "BUY", "0.50", "10")  # before the process: loaded from DB

    env = child_env(PRICE_BUS_SHARDS="1")
    root = Path(__file__).resolve().parents[2]
    stats = tmp_path / "stats.json"
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "trading", "match", "--shard", "0/1",
         "--stats-file", str(stats)],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not stats.exists():  # written once it is consuming
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        later = place(account, yes, "BUY", "0.49", "10")  # reaches it as an order event
        bus.heartbeat(0)
        publish_book(yes.token_id, bids=[("0.48", "100")], asks=[("0.50", "4")])
        trade = TradePrint(yes.token_id, "0.45", "3", "SELL", now_ms(), now_ms())
        bus.publish_json([], [(yes.token_id, trade.to_json())])

        def sizes(order):
            return sorted(f.size for f in maker_fills(order))

        while (sizes(resting), sizes(later)) != ([D("3"), D("4")], []):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, (sizes(resting), sizes(later))
            time.sleep(0.1)
        # The print went to the better-priced order first (price priority).
        assert Fill.objects.filter(order=resting, price_source="trade").get().size == D("3")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "matcher stopped" in out
    assert bus.pending_count(0, "matcher") == 0
    audit_clean()
