"""The capped ring of market-wide trade prints per token (display only): the feed records the
`last_trade_price` events it sees, the market page reads them in one round trip."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from marketdata.bus import DEFAULT_TRADES_KEPT, RedisBus, TradePrint
from marketdata.messages import BookKeeper, normalise


@pytest.fixture
def bus(redis_url) -> Iterator[RedisBus]:
    redis_bus = RedisBus.from_url(redis_url, n_shards=4)
    yield redis_bus
    redis_bus.client.close()


def _print(token: str, n: int) -> TradePrint:
    side = "BUY" if n % 2 else "SELL"
    return TradePrint(token, f"0.{40 + n % 50:02d}", f"{n}.5", side, n, 1_800_000_000_000 + n)


def test_prints_come_back_newest_first_per_token(bus):
    bus.record_trades([_print("a", 1), _print("b", 2), _print("a", 3)])
    got = bus.recent_trades_many(["a", "b", "c"])
    assert got == {"a": [_print("a", 3), _print("a", 1)], "b": [_print("b", 2)], "c": []}
    assert bus.recent_trades_many(["a"], limit=1) == {"a": [_print("a", 3)]}


def test_the_ring_is_capped(bus):
    bus.record_trades([_print("a", n) for n in range(DEFAULT_TRADES_KEPT + 7)])
    ring = bus.recent_trades_many(["a"])["a"]
    assert len(ring) == DEFAULT_TRADES_KEPT
    assert ring[0].timestamp_ms == DEFAULT_TRADES_KEPT + 6 and ring[-1].timestamp_ms == 7


def test_no_prints_and_no_tokens(bus):
    bus.record_trades([])
    assert bus.recent_trades_many([]) == {}


def test_bookkeeper_hands_out_each_print_once():
    keeper = BookKeeper()
    keeper.track("tok")
    event = normalise(
        {
            "event_type": "last_trade_price",
            "asset_id": "tok",
            "market": "0xm",
            "price": "0.55",
            "side": "BUY",
            "size": "12",
            "fee_rate_bps": "0",
            "timestamp": "1786604072222",
        },
        keeper.stats,
    )
    assert event is not None
    keeper.apply(event)
    [(token, blob)] = keeper.drain_trades_json()
    trade = TradePrint.from_json(blob)
    assert token == trade.token_id == "tok"
    assert (trade.price, trade.size, trade.side, trade.timestamp_ms) == (
        "0.55",
        "12",
        "BUY",
        1786604072222,
    )
    assert keeper.drain_trades_json() == []
