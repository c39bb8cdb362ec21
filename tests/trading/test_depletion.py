"""Depletion belongs to one version of a book level (docs/fill-model.md, "Depletion"): what
simulated orders took from a level is forgotten as soon as the feed next sets that level,
also when it removes the level and re-posts it at the same size (issue #12, defect 1: a
held-out run took all 110 at 0.52, the feed sent "0" then "110", and a $20 market BUY then
filled 34.77 @ 0.56 instead of 37.34 @ 0.52).

End to end on the real path: websocket frames into the feed's `BookKeeper`, its tops
published on the price bus (`drain_tops_json` + `publish_json`, as the ingester does), taker
orders through `order_place` and maker fills through the matcher."""

from __future__ import annotations

import itertools
from decimal import Decimal as D
from typing import Any

import orjson
import pytest

from core import errors
from marketdata.bus import get_bus
from marketdata.messages import BookKeeper
from tests.trading.conftest import audit_clean, make_market, open_account
from tests.trading.test_matcher import maker_fills, new_matcher, place
from trading.services import order_place

pytestmark = pytest.mark.django_db


class Feed:
    """One token's feed: frames in the exchange's shape into a BookKeeper; `flush` publishes
    what changed on the process bus and beats the token's shard, as the ingester does."""

    def __init__(self, token_id: str, market: str) -> None:
        self.token_id, self.market = token_id, market
        self.keeper = BookKeeper()
        self.keeper.track(token_id, market=market, tick_size="0.01")
        self._ts = itertools.count(1_790_000_000_000)

    def book(self, *, bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> None:
        """A `book` snapshot (wire order: bids ascending, asks descending)."""
        self._frame(
            {
                "event_type": "book",
                "market": self.market,
                "asset_id": self.token_id,
                "timestamp": str(next(self._ts)),
                "bids": [{"price": p, "size": s} for p, s in sorted(bids)],
                "asks": [{"price": p, "size": s} for p, s in sorted(asks, reverse=True)],
                "tick_size": "0.01",
            }
        )

    def change(self, *entries: tuple[str, str, str]) -> None:
        """One `price_change` message: (side, price, new total size) per entry."""
        self._frame(
            {
                "event_type": "price_change",
                "market": self.market,
                "timestamp": str(next(self._ts)),
                "price_changes": [
                    {"asset_id": self.token_id, "side": side, "price": price, "size": size}
                    for side, price, size in entries
                ],
            }
        )

    def _frame(self, msg: dict[str, Any]) -> None:
        self.keeper.feed(orjson.dumps(msg))
        assert not self.keeper.stats.rejected

    def flush(self) -> None:
        bus = get_bus()
        bus.publish_json(self.keeper.drain_tops_json(), self.keeper.drain_trades_json())
        bus.heartbeat(bus.shard_of(self.token_id))


def buy(account: Any, token: Any, **kw: Any) -> Any:
    kw.setdefault("type", "limit")
    return order_place(account_id=account.pk, token_id=token.token_id, side="BUY", **kw)


@pytest.fixture
def traded():
    """The held-out case's market (taker fee 0.25 × (p(1−p))², asks 0.52 × 110 and
    0.56 × 500) after a simulated taker took all 110 at 0.52; the feed unchanged since."""
    market, yes, _ = make_market(fees_enabled=True, fee_rate=D("0.25"), fee_exponent=D("2"))
    feed = Feed(yes.token_id, market.condition_id)
    feed.book(bids=[("0.48", "100")], asks=[("0.52", "110"), ("0.56", "500")])
    feed.flush()
    took = buy(open_account("1000"), yes, price="0.52", size="110", time_in_force="FOK")
    assert [(f.price, f.size) for f in took.fills] == [(D("0.52"), D("110"))]
    return feed, yes


@pytest.mark.parametrize("one_flush", [False, True], ids=["two-tops", "conflated"])
def test_a_level_removed_and_reposted_at_the_same_size_is_whole_again_for_takers(traded, one_flush):
    feed, yes = traded
    # The feed moves the other side only: 0.52 is republished unchanged, still taken.
    feed.change(("BUY", "0.47", "30"))
    feed.flush()
    with pytest.raises(errors.FokOrderNotFilledError):
        buy(open_account("1000"), yes, price="0.52", size="5", time_in_force="FOK")

    # The level is removed, then posted again at the same size: the shares are there again,
    # whether the bus saw the removal or both entries fell into one flush.
    feed.change(("SELL", "0.52", "0"))
    if not one_flush:
        feed.flush()
    feed.change(("SELL", "0.52", "110"))
    feed.flush()

    placed = buy(open_account("1000"), yes, type="market", amount="20")
    # $20 at 0.52 with the fee 0.25 × (0.52 × 0.48)² = 0.0155750… per share: 20 / 0.535575…
    # = 37.343… → 37.34 shares (37.34 × 0.52 = 19.4168, fee 0.58157, 19.99837 in all).
    assert [(f.price, f.size) for f in placed.fills] == [(D("0.52"), D("37.34"))]
    audit_clean()


def test_a_level_the_feed_restates_at_the_same_size_is_whole_again(traded):
    # A price_change that sets the level to the size it already shows is still the feed
    # setting it (someone cancelled and posted again): the memory of the old one goes.
    feed, yes = traded
    feed.change(("SELL", "0.52", "110"))
    feed.flush()
    placed = buy(open_account("1000"), yes, price="0.52", size="110", time_in_force="FOK")
    assert placed.order.filled_size == D("110")
    audit_clean()


def test_a_snapshot_keeps_what_it_shows_unchanged_and_renews_what_came_back(traded):
    feed, yes = traded
    # A `book` showing 0.52 × 110 as before (the post-trade snapshot): still taken.
    feed.book(bids=[("0.48", "100")], asks=[("0.52", "110"), ("0.56", "500")])
    feed.flush()
    with pytest.raises(errors.FokOrderNotFilledError):
        buy(open_account("1000"), yes, price="0.52", size="5", time_in_force="FOK")
    # A snapshot without it, then one with it again at the same size: whole again.
    feed.book(bids=[("0.48", "100")], asks=[("0.56", "500")])
    feed.book(bids=[("0.48", "100")], asks=[("0.52", "110"), ("0.56", "500")])
    feed.flush()
    placed = buy(open_account("1000"), yes, price="0.52", size="110", time_in_force="FOK")
    assert placed.order.filled_size == D("110")


def test_a_maker_fills_from_a_level_removed_and_reposted_at_the_same_size(traded):
    feed, yes = traded
    matcher = new_matcher()
    # Marketable at entry, but 0.52 is all taken: the BUY rests.
    maker = open_account("100")
    resting = place(maker, yes, "BUY", "0.52", "50")
    assert resting.status == "live" and resting.filled_size == 0
    feed.change(("BUY", "0.47", "30"))  # 0.52 republished unchanged: nothing to fill
    feed.flush()
    matcher.step()
    assert maker_fills(resting) == []

    feed.change(("SELL", "0.52", "0"))
    feed.flush()
    matcher.step()  # the best ask is 0.56 now: no cross
    feed.change(("SELL", "0.52", "110"))
    feed.flush()
    matcher.step()
    (fill,) = maker_fills(resting)
    assert (fill.price, fill.size, fill.fee) == (D("0.52"), D("50"), D("0"))
    # The maker took 50 of this version of the level: 60 are left for takers.
    with pytest.raises(errors.FokOrderNotFilledError):
        buy(open_account("1000"), yes, price="0.52", size="61", time_in_force="FOK")
    placed = buy(open_account("1000"), yes, price="0.52", size="61", time_in_force="FAK")
    assert placed.order.filled_size == D("60")
    audit_clean()
