"""OrderBook: exact strings, best-last wire order, the verified hash recipe, recorded books."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from marketdata.book import (
    OrderBook,
    book_from_levels,
    is_valid_price,
    is_valid_size,
    parse_price,
    parse_size,
)
from marketdata.bus import BookTop

SEQUENCE = "fixtures/polymarket/ws/nt_ws_sequence_book_pricechange_trade_2026-09.jsonl"
TOKEN_A = "76670567130917723816490572615540605537878462672464291990940067659127658071111"
TRADE_TS = "1790658827000"  # the trade burst: three price_change messages, then a `book`


def read_json(shared_dir: Path, rel: str) -> dict:
    return json.loads((shared_dir / rel).read_text())


def read_sequence(shared_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (shared_dir / SEQUENCE).read_text().splitlines()]


def small_book() -> OrderBook:
    return book_from_levels(
        market="0xm",
        asset_id="tok",
        # deliberately not in wire order
        bids=[("0.3", "10"), ("0.1", "5"), ("0.25", "7.5")],
        asks=[("0.4", "3"), ("0.55", "1.25"), ("0.45", "100")],
        tick_size="0.01",
    )


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["0.5", ".48", "0.920", "1", "1.0", "0.0001"])
def test_valid_prices(text):
    assert is_valid_price(text)
    assert parse_price(text) == Decimal(text)


@pytest.mark.parametrize(
    "text",
    ["0", "0.0", "1.01", "2", "-0.5", "abc", "NaN", "nan", "Infinity", "1e-3", " 0.5", "0.5 ",
     "0_5", "", ".", "0..5", "٠.٥", None, 0.5, 1, ["0.5"]],
)  # fmt: skip
def test_invalid_prices(text):
    assert not is_valid_price(text)
    assert parse_price(text) is None


@pytest.mark.parametrize("text", ["0", "0.00", "5", "220045", "100.09", ".5", "5."])
def test_valid_sizes(text):
    assert is_valid_size(text)
    assert parse_size(text) == Decimal(text)


@pytest.mark.parametrize(
    "text", ["-1", "-0", "abc", "NaN", "Infinity", "1e3", "", ".", "1,000", "²", None, 5, 5.0]
)
def test_invalid_sizes(text):
    assert not is_valid_size(text)
    assert parse_size(text) is None


# --- ordering and reads -------------------------------------------------------------------------


def test_to_wire_is_best_last_with_exact_strings():
    wire = small_book().to_wire()
    assert [lvl["price"] for lvl in wire["bids"]] == ["0.1", "0.25", "0.3"]  # ascending
    assert [lvl["price"] for lvl in wire["asks"]] == ["0.55", "0.45", "0.4"]  # descending
    assert wire["bids"][-1] == {"price": "0.3", "size": "10"}
    assert wire["asks"][-1] == {"price": "0.4", "size": "3"}


def test_levels_are_best_first_as_decimals():
    book = small_book()
    assert book.levels("BUY") == [
        (Decimal("0.3"), Decimal("10")),
        (Decimal("0.25"), Decimal("7.5")),
        (Decimal("0.1"), Decimal("5")),
    ]
    assert book.levels("SELL", 2) == [
        (Decimal("0.4"), Decimal("3")),
        (Decimal("0.45"), Decimal("100")),
    ]
    assert book.levels("BUY", 0) == []
    assert book.levels("BUY", 10) == book.levels("BUY")
    assert book.top_levels("SELL", 1) == [["0.4", "3"]]


def test_best_mid_spread_are_exact_decimals():
    book = small_book()
    assert book.best_bid() == Decimal("0.3")
    assert book.best_ask() == Decimal("0.4")
    assert book.mid() == Decimal("0.35")
    assert book.spread() == Decimal("0.1")
    assert not book.is_crossed()


def test_one_sided_book_has_no_mid_or_spread():
    book = book_from_levels(market="m", asset_id="t", bids=[("0.2", "1")], asks=[])
    assert book.best_ask() is None
    assert book.mid() is None
    assert book.spread() is None


def test_apply_change_sets_total_and_zero_removes():
    book = small_book()
    book.apply_change("BUY", "0.31", "4")  # new best bid
    assert book.best_bid() == Decimal("0.31")
    book.apply_change("BUY", "0.31", "6")  # size is the new total, not a delta
    assert book.level_size("BUY", "0.31") == "6"
    book.apply_change("BUY", "0.31", "0")
    assert book.best_bid() == Decimal("0.3")
    book.apply_change("SELL", "0.4", "0.00")  # any spelling of zero removes
    assert book.best_ask() == Decimal("0.45")
    book.apply_change("SELL", "0.99", "0")  # removing a missing level is a no-op
    assert [lvl["price"] for lvl in book.to_wire()["asks"]] == ["0.55", "0.45"]


def test_same_price_spelled_twice_is_one_level():
    book = small_book()
    book.apply_change("BUY", "0.30", "11")
    assert [lvl["price"] for lvl in book.to_wire()["bids"]] == ["0.1", "0.25", "0.30"]
    assert book.level_size("BUY", "0.3") is None
    book.apply_change("BUY", "0.3", "0")  # the other spelling still removes it
    assert book.best_bid() == Decimal("0.25")


@pytest.mark.parametrize(
    ("side", "price", "size"),
    [("BID", "0.3", "1"), ("BUY", "abc", "1"), ("BUY", "0.3", "-1"), ("BUY", "0.3", "NaN")],
)
def test_apply_change_rejects_bad_input_without_touching_the_book(side, price, size):
    book = small_book()
    before = book.to_wire()
    with pytest.raises(ValueError):
        book.apply_change(side, price, size)
    assert book.to_wire() == before


def test_invalid_snapshot_raises_and_leaves_the_book_alone():
    book = small_book()
    before = book.to_wire()
    bad = {"asset_id": "tok", "bids": [{"price": "0.2", "size": "-5"}], "asks": []}
    with pytest.raises(ValueError):
        book.replace_from_snapshot(bad)
    assert book.to_wire() == before
    with pytest.raises(ValueError):
        OrderBook.from_snapshot({"market": "m", "bids": [], "asks": []})  # no asset_id


# --- recorded books and the hash recipe ---------------------------------------------------------


def test_rest_book_with_empty_asks_reproduces_its_hash(shared_dir):
    msg = read_json(shared_dir, "fixtures/polymarket/clob/nt_clob_book_empty_ask_2026-08-03.json")
    book = OrderBook.from_snapshot(msg)
    assert book.neg_risk is True and book.tick_size == "0.001" and book.last_trade_price == ""
    assert book.best_ask() is None
    assert book.compute_hash() == msg["hash"] == "d7df883ae546b09533a4f485bfae0810da1af04e"
    assert book.hash_matches(msg["hash"])
    assert book.to_wire() == msg  # every field, same order of levels


def test_ws_book_hash_uses_market_defaults_for_fields_not_on_the_wire(shared_dir):
    msg = read_json(shared_dir, "fixtures/polymarket/ws/nt_ws_book_captured_2026-08.json")
    book = OrderBook.from_snapshot(msg)  # min_order_size "5", neg_risk false
    assert book.compute_hash() == msg["hash"]
    assert OrderBook.from_snapshot(msg, neg_risk=True).compute_hash() != msg["hash"]
    assert book.to_wire()["bids"] == msg["bids"] and book.to_wire()["asks"] == msg["asks"]


def test_2024_rest_book_without_tick_or_min_size_loads(shared_dir):
    msg = read_json(shared_dir, "fixtures/polymarket/clob/nt_clob_book_2024-10.json")
    book = OrderBook.from_snapshot(msg)
    assert book.tick_size is None
    assert book.min_order_size == "5"
    assert book.best_bid() == Decimal("0.1")
    assert book.best_ask() == Decimal("0.14")
    assert book.to_wire()["bids"] == msg["bids"]  # already best-last on the wire
    assert book.to_wire()["asks"] == msg["asks"]
    assert book.hash == msg["hash"]  # kept as received (2024 used another recipe)


def test_2024_ws_book_loads(shared_dir):
    msg = read_json(shared_dir, "fixtures/polymarket/ws/nt_ws_book_2024-10.json")
    book = OrderBook.from_snapshot(msg)
    assert (len(book.bids), len(book.asks)) == (76, 86)
    assert book.best_bid() < book.best_ask()


def test_post_trade_snapshot_keeps_tick_and_last_trade_price(shared_dir):
    seq = read_sequence(shared_dir)
    book = OrderBook.from_snapshot(seq[0])
    assert (book.tick_size, book.last_trade_price) == ("0.001", "0.255")
    book.replace_from_snapshot(seq[-1])  # the post-trade book omits both
    assert (book.tick_size, book.last_trade_price) == ("0.001", "0.255")
    assert book.timestamp == seq[-1]["timestamp"] and book.hash == seq[-1]["hash"]


def test_price_change_entry_hash_is_the_book_after_the_change(shared_dir):
    """Replay token A's 49 entries onto the first book and check every entry's hash.

    Rule (see OrderBook.compute_hash): the entry hash is the token's book hash after applying
    the entry, with the MESSAGE's timestamp and the exchange's last trade price at that
    moment. 47 of 49 match; the 2 misses are the first two entries of the trade burst (the
    book is crossed after each) and carry the post-burst book's hash instead.
    """
    seq = read_sequence(shared_dir)
    book = OrderBook.from_snapshot(seq[0])
    assert book.compute_hash() == seq[0]["hash"]
    final = seq[-1]
    matched, missed, entries = [], [], 0
    for index, msg in enumerate(seq[1:-1], start=1):
        for entry in msg["price_changes"]:
            if entry["asset_id"] != TOKEN_A:
                continue
            entries += 1
            book.apply_change(entry["side"], entry["price"], entry["size"])
            # The trade at TRADE_TS moved the exchange's last trade price to 0.301.
            ltp = "0.301" if msg["timestamp"] == TRADE_TS else "0.255"
            ok = book.hash_matches(entry["hash"], timestamp=msg["timestamp"], last_trade_price=ltp)
            (matched if ok else missed).append(index)
            if msg["timestamp"] != TRADE_TS:  # outside the burst the old price explains all
                assert book.hash_matches(entry["hash"], timestamp=msg["timestamp"])
            if not ok:
                assert book.is_crossed()  # transiently crossed: mid-burst
                assert entry["hash"] == final["hash"]  # already the post-trade book's hash
    assert entries == 49
    assert len(matched) == 47
    assert missed == [47, 48]
    # The replay rebuilds the recorded post-trade book exactly, hash included.
    wire = book.to_wire()
    assert wire["bids"] == final["bids"] and wire["asks"] == final["asks"]
    book.timestamp, book.last_trade_price = final["timestamp"], "0.301"
    assert book.compute_hash() == final["hash"]


def test_tick_size_is_part_of_the_hash():
    book = small_book()
    before = book.compute_hash()
    book.tick_size = "0.001"
    assert book.compute_hash() != before


# --- level versions (docs/fill-model.md, "Depletion") ------------------------------------
def versions(book: OrderBook) -> dict[str, dict[str, int]]:
    top = BookTop.from_book(book)
    return {
        "bids": {p: v for (p, _), v in zip(top.bids, top.bid_versions, strict=True)},
        "asks": {p: v for (p, _), v in zip(top.asks, top.ask_versions, strict=True)},
    }


def test_every_price_change_gives_its_level_a_new_version_others_keep_theirs():
    book = small_book()
    before = versions(book)
    book.apply_change("SELL", "0.4", "3")  # the same size again: still the feed setting it
    book.apply_change("SELL", "0.45", "0")  # removed ...
    book.apply_change("SELL", "0.45", "100")  # ... and back at the same size
    after = versions(book)
    assert after["asks"]["0.4"] > before["asks"]["0.4"]
    assert after["asks"]["0.45"] > after["asks"]["0.4"]
    assert after["asks"]["0.55"] == before["asks"]["0.55"]
    assert after["bids"] == before["bids"]


def test_a_snapshot_keeps_the_versions_of_the_levels_it_shows_unchanged():
    book = small_book()
    before = versions(book)
    book.replace_from_snapshot(
        {
            "bids": [{"price": "0.1", "size": "5"}, {"price": "0.3", "size": "11"}],
            "asks": [{"price": "0.55", "size": "1.25"}, {"price": "0.4", "size": "3"}],
        }
    )
    after = versions(book)
    assert after["bids"]["0.1"] == before["bids"]["0.1"]
    assert after["asks"] == {"0.4": before["asks"]["0.4"], "0.55": before["asks"]["0.55"]}
    assert after["bids"]["0.3"] > max(v for side in before.values() for v in side.values())
    # Versions only grow: a new book never reuses one (a restarted feed seeds from the clock).
    again = versions(small_book())
    assert min(again["bids"].values()) > after["bids"]["0.3"]
