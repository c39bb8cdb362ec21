"""Frame parsing, event normalisation and the BookKeeper on recorded Polymarket traffic."""

from __future__ import annotations

import copy
import json
import logging
import time
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from marketdata.book import OrderBook
from marketdata.bus import BookTop, encode_top
from marketdata.messages import BookKeeper, FeedStats, normalise, parse_events, parse_frame

WS = "fixtures/polymarket/ws/"
SEQUENCE = WS + "nt_ws_sequence_book_pricechange_trade_2026-09.jsonl"
TOKEN_A = "76670567130917723816490572615540605537878462672464291990940067659127658071111"
TOKEN_B = "54179564009642723353355316176091991063553046330768303687769988635499280029688"
TRADE_TS = "1790658827000"


def frames(shared_dir: Path) -> list[bytes]:
    return (shared_dir / SEQUENCE).read_bytes().splitlines()


def read_json(shared_dir: Path, rel: str) -> dict:
    return json.loads((shared_dir / rel).read_text())


def keeper_for(*tokens: str, **kwargs) -> BookKeeper:
    keeper = BookKeeper(**kwargs)
    for token in tokens:
        keeper.track(token)
    return keeper


def replay_events(keeper: BookKeeper, raw_frames: list[bytes]) -> list[str | None]:
    """parse_frame + normalise + apply, frame by frame; A's hash outcome after each frame."""
    outcomes = []
    for raw in raw_frames:
        keeper.last_hash_result.pop(TOKEN_A, None)
        for obj in parse_frame(raw, keeper.stats):
            event = normalise(obj, keeper.stats)
            if event is not None:
                keeper.apply(event)
        outcomes.append(keeper.last_hash_result.get(TOKEN_A))
    return outcomes


def complement_book(msg: dict, asset_id: str) -> dict:
    """Token B's book as the mirror of A's (price 1 - p, bids <-> asks), best-last."""

    def mirror(levels):
        return [{"price": str(1 - Decimal(lvl["price"])), "size": lvl["size"]} for lvl in levels]

    return {
        "event_type": "book",
        "market": msg["market"],
        "asset_id": asset_id,
        "timestamp": msg["timestamp"],
        "hash": "",
        "bids": mirror(msg["asks"]),  # A's asks descending -> B's bids ascending
        "asks": mirror(msg["bids"]),
        "tick_size": msg["tick_size"],
    }


# --- parse_frame ------------------------------------------------------------------------------


def test_parse_frame_single_object_and_array():
    stats = FeedStats()
    assert parse_frame(b'{"event_type":"book"}', stats) == [{"event_type": "book"}]
    assert parse_frame('[{"a":1},{"b":2}]', stats) == [{"a": 1}, {"b": 2}]
    assert stats.frames == 2 and stats.rejected == {}


@pytest.mark.parametrize("raw", ["PONG", b"PONG", "PONG\n"])
def test_pong_is_ignored_quietly(raw):
    stats = FeedStats()
    assert parse_frame(raw, stats) == []
    assert stats.non_json_frames == 1 and stats.rejected == {}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ('{"event_type": "book", ', "malformed_json"),
        ("hello", "malformed_json"),
        ("", "malformed_json"),
        ("42", "non_object_frame"),
        ('"text"', "non_object_frame"),
        ('[{"a":1}, 3]', "non_object_item"),
    ],
)
def test_parse_frame_counts_garbage_and_never_raises(raw, reason):
    stats = FeedStats()
    parse_frame(raw, stats)
    assert stats.rejected == {reason: 1}


# --- normalise --------------------------------------------------------------------------------


def test_unknown_event_type_is_counted_and_ignored():
    stats = FeedStats()
    assert normalise({"event_type": "brand_new_thing", "x": 1}, stats) is None
    assert normalise({"no_type": True}, stats) is None
    assert stats.events == {"brand_new_thing": 1, "<missing>": 1}
    assert stats.rejected == {"unknown_event_type": 1, "missing_event_type": 1}


def test_legacy_price_change_is_rejected_as_legacy(shared_dir):
    stats = FeedStats()
    raw = (shared_dir / WS / "nt_ws_price_change_LEGACY_pre2025-09.json").read_bytes()
    assert parse_events(raw, stats) == []
    legacy_changes_shape = {
        "event_type": "price_change",
        "asset_id": TOKEN_A,
        "market": "0xm",
        "changes": [{"price": "0.5", "side": "BUY", "size": "10"}],
        "timestamp": "1",
    }
    assert normalise(legacy_changes_shape, stats) is None
    assert stats.rejected == {"legacy_price_change": 2}


def test_price_change_drops_only_the_bad_entries():
    good = {"asset_id": "t1", "price": "0.5", "size": "10", "side": "BUY", "hash": "h"}
    bad = [
        ({**good, "size": "-5"}, "bad_size"),
        ({**good, "size": "abc"}, "bad_size"),
        ({**good, "size": "NaN"}, "bad_size"),
        ({**good, "size": 10}, "bad_size"),
        ({**good, "price": "1.5"}, "bad_price"),
        ({**good, "price": ["0.5"]}, "malformed_entry"),
        ({k: v for k, v in good.items() if k != "price"}, "malformed_entry"),
        ({**good, "side": "bid"}, "bad_side"),
        ({**good, "asset_id": 7}, "bad_asset_id"),
        ("not an object", "malformed_entry"),
    ]
    stats = FeedStats()
    msg = {
        "event_type": "price_change",
        "market": "0xm",
        "timestamp": "1700000000000",
        "price_changes": [good] + [entry for entry, _ in bad],
    }
    event = normalise(msg, stats)
    assert event == {
        "event_type": "price_change",
        "market": "0xm",
        "timestamp": "1700000000000",
        "changes": [("t1", True, "0.5", "10", "h")],
    }
    expected: dict[str, int] = {}
    for _, reason in bad:
        expected[reason] = expected.get(reason, 0) + 1
    assert stats.rejected == expected


def test_normalise_other_event_types(shared_dir):
    stats = FeedStats()
    tick = normalise(read_json(shared_dir, WS + "nt_ws_tick_size_change_2025-02.json"), stats)
    assert tick is not None and tick["event_type"] == "tick_size_change"
    assert (tick["old_tick_size"], tick["new_tick_size"]) == ("0.01", "0.001")

    trade = normalise(read_json(shared_dir, WS + "nt_ws_last_trade_price_2024-08.json"), stats)
    assert trade is not None and trade["event_type"] == "last_trade_price"
    assert (trade["price"], trade["side"], trade["size"]) == ("0.491", "SELL", "85.36")
    assert trade["transaction_hash"] is None  # older capture

    bba = normalise(read_json(shared_dir, WS + "nt_ws_best_bid_ask.json"), stats)
    assert bba is not None and bba["event_type"] == "best_bid_ask"
    assert (bba["best_bid"], bba["best_ask"], bba["spread"]) == ("0.73", "0.77", "0.04")

    new = normalise(read_json(shared_dir, WS + "nt_ws_new_market.json"), stats)
    assert new is not None and new["event_type"] == "new_market"
    assert len(new["asset_ids"]) == 2 and new["outcomes"] == ["Yes", "No"]
    assert new["tick_size"] == "0.01"

    resolved_msg = read_json(shared_dir, WS + "nt_ws_market_resolved.json")
    resolved = normalise(resolved_msg, stats)
    assert resolved is not None and resolved["event_type"] == "market_resolved"
    assert resolved["winning_asset_id"] == resolved_msg["winning_asset_id"]
    assert resolved["asset_ids"] == resolved_msg["assets_ids"]
    assert stats.rejected == {}


def test_market_resolved_accepts_the_sdk_aliases(shared_dir):
    msg = read_json(shared_dir, WS + "nt_ws_market_resolved.json")
    ids = msg.pop("assets_ids")
    winner = msg.pop("winning_asset_id")
    for alias in ("asset_ids", "token_ids"):
        event = normalise({**msg, alias: ids, "winning_token_id": winner})
        assert event is not None and event["event_type"] == "market_resolved"
        assert event["asset_ids"] == ids and event["winning_asset_id"] == winner
    stats = FeedStats()
    assert normalise(msg, stats) is None  # no winner at all
    assert stats.rejected == {"malformed_market_resolved": 1}


def test_malformed_known_events_are_counted():
    stats = FeedStats()
    assert normalise({"event_type": "book", "asset_id": "t"}, stats) is None
    assert (
        normalise({"event_type": "last_trade_price", "asset_id": "t", "price": "x"}, stats) is None
    )
    assert normalise({"event_type": "tick_size_change", "asset_id": "t"}, stats) is None
    assert stats.rejected == {
        "malformed_book": 1,
        "malformed_last_trade_price": 1,
        "malformed_tick_size_change": 1,
    }


# --- golden replay ----------------------------------------------------------------------------


def test_golden_replay_rebuilds_the_recorded_final_book_and_hash(shared_dir):
    raw = frames(shared_dir)
    assert len(raw) == 51
    keeper = keeper_for(TOKEN_A, verify="entry")
    outcomes = replay_events(keeper, raw[:-1])  # the snapshot and the 49 deltas

    # Before the final `book` replaces anything, the deltas alone rebuilt it exactly.
    final = orjson.loads(raw[-1])
    book = keeper.book(TOKEN_A)
    assert book is not None
    wire = book.to_wire()
    assert wire["bids"] == final["bids"]  # exact strings, best last
    assert wire["asks"] == final["asks"]
    assert book.timestamp == final["timestamp"]
    assert book.compute_hash() == final["hash"] == "78b396c8a7f4989f638fe6cf9b2e8ced15680ba7"
    assert book.last_trade_price == "0.301"  # recovered from the burst's last hash
    assert not keeper.needs_resync(TOKEN_A)
    outcomes += replay_events(keeper, raw[-1:])
    assert keeper.book(TOKEN_A).to_wire()["bids"] == final["bids"]

    # Per-entry hash checks: 47 of 49 match; the misses are frames 47 and 48, the first two
    # messages of the trade burst, and they are deferred (crossed book), not errors.
    entry_outcomes = outcomes[1:50]
    assert sum(o in ("match", "inferred") for o in entry_outcomes) == 47
    misses = [i for i, o in enumerate(outcomes) if o not in ("match", "inferred")]
    assert misses == [47, 48]
    assert all(outcomes[i] == "deferred" for i in misses)
    assert all(orjson.loads(raw[i])["timestamp"] == TRADE_TS for i in (47, 48, 49))
    assert outcomes[49] == "inferred"  # matched with last_trade_price = the trade's 0.301
    assert outcomes[0] == outcomes[50] == "match"  # both snapshots

    stats = keeper.stats
    assert stats.events == {"book": 2, "price_change": 49}
    assert stats.entries_applied == 49  # A's entries
    assert stats.entries_untracked == 49  # B's entries, in the same messages
    assert (stats.hash_deferred, stats.hash_mismatched, stats.rejected) == (2, 0, {})


@pytest.mark.parametrize("drain_every", [1, 7])
def test_golden_replay_through_feed_in_flush_mode(shared_dir, drain_every):
    raw = frames(shared_dir)
    keeper = keeper_for(TOKEN_A)  # verify="flush", the feed's default
    for i, frame in enumerate(raw[:-1]):
        keeper.feed(frame)
        if i % drain_every == 0 and i < 49:
            keeper.drain_tops()
    tops = {top.token_id: top for top in keeper.drain_tops()}
    final = orjson.loads(raw[-1])
    book = keeper.book(TOKEN_A)
    assert book is not None
    assert book.to_wire()["bids"] == final["bids"] and book.to_wire()["asks"] == final["asks"]
    assert book.compute_hash() == final["hash"]
    assert keeper.stats.hash_mismatched == 0 and keeper.stats.rejected == {}
    top = tops[TOKEN_A]
    assert (top.best_bid, top.best_ask, top.hash, top.fresh) == (
        "0.29",
        "0.301",
        final["hash"],
        True,
    )
    assert top.last_trade_price == "0.301"
    # Drained after every frame, the burst's first two claims were deferred, not failed.
    assert keeper.stats.hash_deferred == (2 if drain_every == 1 else 0)
    keeper.feed(raw[-1])
    assert keeper.last_hash_result[TOKEN_A] == "match"


def test_each_entry_walks_its_own_tokens_book_only(shared_dir):
    """Messages carry mirrored entries for A and B: B's entries never reach A's book, and
    with both tracked A still ends exactly where the recording says."""
    raw = frames(shared_dir)
    first = orjson.loads(raw[0])
    # B's snapshot is synthetic (A's mirror), so B's real hashes cannot match: no checks.
    keeper = keeper_for(TOKEN_A, TOKEN_B, verify="off")
    keeper.apply(normalise(complement_book(first, TOKEN_B)))
    keeper.feed(raw[0])
    b_prices = set()
    for frame in raw[1:-1]:  # the deltas only: the final `book` would hide any leak
        for obj in parse_frame(frame):
            if obj["event_type"] == "price_change":
                b_prices |= {e["price"] for e in obj["price_changes"] if e["asset_id"] == TOKEN_B}
        keeper.feed(frame)

    final = orjson.loads(raw[-1])
    book_a, book_b = keeper.book(TOKEN_A), keeper.book(TOKEN_B)
    assert book_a is not None and book_b is not None
    assert book_a.to_wire()["bids"] == final["bids"] and book_a.to_wire()["asks"] == final["asks"]
    b_only = {"0.699", "0.689", "0.641"}  # B's levels, never A's
    assert b_only <= b_prices
    assert not b_only & (set(book_a.bids) | set(book_a.asks))
    assert keeper.stats.entries_applied == 98 and keeper.stats.entries_untracked == 0
    assert keeper.stats.snapshots_applied == 2
    # B's book moved by its own entries: at the end it mirrors A's final book.
    mirrored = complement_book(final | {"tick_size": "0.001"}, TOKEN_B)
    assert book_b.to_wire()["bids"] == [
        {"price": lvl["price"], "size": lvl["size"]} for lvl in mirrored["bids"]
    ]


# --- bad input never reaches a book -----------------------------------------------------------


BAD_FRAMES = {
    "malformed_json": b'{"event_type":"price_change","price_changes":[',
    "pong": b"PONG",
    "unknown_event_type": b'{"event_type":"order_book_v9","asset_id":"%s"}' % TOKEN_A.encode(),
    "negative_size": b"-1",
    "abc_size": b'"abc"',
    "nan_size": b'"NaN"',
    "missing_price": None,
}


def bad_price_change(size: str | None, *, drop: str | None = None) -> bytes:
    entry = {"asset_id": TOKEN_A, "price": "0.3", "size": size, "side": "BUY", "hash": "x"}
    if drop:
        del entry[drop]
    return orjson.dumps(
        {
            "event_type": "price_change",
            "market": "0xm",
            "timestamp": "1790658700000",
            "price_changes": [entry],
        }
    )


@pytest.mark.parametrize(
    ("frame", "counter"),
    [
        (b'{"event_type":"price_change","price_changes":[', ("rejected", "malformed_json")),
        (b"PONG", ("non_json_frames", None)),
        (b'{"event_type":"order_book_v9","asset_id":"t"}', ("rejected", "unknown_event_type")),
        (bad_price_change("-100"), ("rejected", "bad_size")),
        (bad_price_change("abc"), ("rejected", "bad_size")),
        (bad_price_change("NaN"), ("rejected", "bad_size")),
        (bad_price_change("Infinity"), ("rejected", "bad_size")),
        (bad_price_change("5", drop="price"), ("rejected", "malformed_entry")),
        (b'{"event_type":"book","asset_id":"x"}', ("rejected", "malformed_book")),
    ],
)
def test_bad_input_is_counted_and_never_applied(shared_dir, frame, counter):
    keeper = keeper_for(TOKEN_A)
    keeper.feed(frames(shared_dir)[0])
    book = keeper.book(TOKEN_A)
    assert book is not None
    before = copy.deepcopy(book.to_wire())
    keeper.feed(frame)
    assert book.to_wire() == before
    assert keeper.stats.entries_applied == 0
    field, reason = counter
    if reason is None:
        assert getattr(keeper.stats, field) == 1
    else:
        assert keeper.stats.rejected == {reason: 1}


def test_legacy_file_through_the_keeper(shared_dir):
    keeper = keeper_for(TOKEN_A)
    keeper.feed(frames(shared_dir)[0])
    before = keeper.book(TOKEN_A).to_wire()
    keeper.feed((shared_dir / WS / "nt_ws_price_change_LEGACY_pre2025-09.json").read_bytes())
    assert keeper.book(TOKEN_A).to_wire() == before
    assert keeper.stats.rejected == {"legacy_price_change": 1}


def test_bad_input_is_logged_rate_limited(caplog):
    stats = FeedStats()
    with caplog.at_level(logging.WARNING, logger="polysim.marketdata"):
        for _ in range(1000):
            parse_frame(b"{not json", stats)
    assert stats.rejected == {"malformed_json": 1000}
    assert len(caplog.records) == 1


def test_a_crossed_snapshot_array_frame_is_two_books(shared_dir):
    first = orjson.loads(frames(shared_dir)[0])
    keeper = keeper_for(TOKEN_A, TOKEN_B)
    keeper.feed(orjson.dumps([first, complement_book(first, TOKEN_B)]))  # subscribe snapshot
    assert keeper.stats.snapshots_applied == 2
    assert not keeper.needs_resync(TOKEN_A) and not keeper.needs_resync(TOKEN_B)


# --- resync, tick, last trade -----------------------------------------------------------------


def test_deltas_wait_for_a_first_snapshot(shared_dir):
    raw = frames(shared_dir)
    keeper = keeper_for(TOKEN_A)
    assert keeper.needs_resync(TOKEN_A) and keeper.resync_wanted() == {TOKEN_A}
    keeper.feed(raw[1])
    assert keeper.book(TOKEN_A) is None and keeper.stats.entries_skipped_resync == 1
    keeper.feed(raw[0])
    assert not keeper.needs_resync(TOKEN_A)


def test_hash_mismatch_holds_the_token_until_a_rest_snapshot(shared_dir):
    raw = frames(shared_dir)
    keeper = keeper_for(TOKEN_A, verify="entry")
    keeper.feed(raw[0])
    keeper.feed(raw[1])
    # Lose the third message: the fourth's hash cannot match any more.
    keeper.feed(raw[3])
    assert keeper.needs_resync(TOKEN_A)
    assert keeper.resync_reason(TOKEN_A) == "hash mismatch"
    assert keeper.stats.hash_mismatched == 1 and keeper.stats.rejected == {"hash_mismatch": 1}
    frozen = keeper.book(TOKEN_A).to_wire()
    keeper.feed(raw[4])  # not applied while on hold
    assert keeper.book(TOKEN_A).to_wire() == frozen
    assert keeper.stats.entries_skipped_resync == 1
    top = keeper.top(TOKEN_A)
    assert top is not None and top.fresh is False

    # Resync: a REST /book of the true state (built here by replaying 0..4 on a fresh book).
    truth = keeper_for(TOKEN_A, verify="off")
    for frame in raw[:5]:
        truth.feed(frame)
    rest = truth.book(TOKEN_A).to_wire()
    rest["hash"] = truth.book(TOKEN_A).compute_hash()
    assert keeper.install_snapshot(rest) is True
    assert not keeper.needs_resync(TOKEN_A)
    keeper.feed(raw[5])
    assert keeper.last_hash_result[TOKEN_A] == "match"


def test_flush_mode_checks_the_last_claim_at_drain(shared_dir):
    raw = frames(shared_dir)
    keeper = keeper_for(TOKEN_A)  # flush mode
    keeper.feed(raw[0])
    keeper.feed(raw[1])
    keeper.feed(raw[3])  # raw[2] lost
    assert not keeper.needs_resync(TOKEN_A)  # not checked yet
    tops = keeper.drain_tops()
    assert keeper.needs_resync(TOKEN_A)
    assert [t.fresh for t in tops] == [False]


def test_verify_interval_defers_checks(shared_dir):
    raw = frames(shared_dir)
    keeper = keeper_for(TOKEN_A, verify_interval_ms=60_000)
    keeper.feed(raw[0])
    keeper.feed(raw[1])
    keeper.drain_tops()  # the snapshot's own check counts for the interval: no check
    checked = keeper.stats.hash_checked
    assert checked == 1
    keeper.feed(raw[2])
    keeper.drain_tops()
    assert keeper.stats.hash_checked == checked  # within the interval
    keeper.verify_pending(force=True)
    assert keeper.stats.hash_checked == checked + 1
    assert keeper.stats.hash_mismatched == 0


def test_tick_size_change_updates_the_tick(shared_dir):
    msg = read_json(shared_dir, WS + "nt_ws_tick_size_change_2025-02.json")
    token = msg["asset_id"]
    keeper = keeper_for(token, verify="off")
    keeper.install_snapshot(
        {"market": msg["market"], "asset_id": token, "timestamp": "1739068000000",
         "bids": [{"price": "0.96", "size": "10"}], "asks": [{"price": "0.97", "size": "5"}],
         "tick_size": "0.01"}
    )  # fmt: skip
    keeper.feed(orjson.dumps(msg))
    assert keeper.book(token).tick_size == "0.001"
    assert keeper.top(token).tick_size == "0.001"
    # A later post-trade book (no tick_size on the wire) keeps the new tick.
    later = {"event_type": "book", "market": msg["market"], "asset_id": token,
             "timestamp": "1739068050000", "hash": "", "bids": [], "asks": []}  # fmt: skip
    keeper.feed(orjson.dumps(later))
    assert keeper.book(token).tick_size == "0.001"


def test_last_trade_price_is_tracked(shared_dir):
    raw = frames(shared_dir)
    keeper = keeper_for(TOKEN_A)
    keeper.feed(raw[0])
    trade = {"event_type": "last_trade_price", "asset_id": TOKEN_A, "market": "0xm",
             "price": "0.301", "side": "SELL", "size": "45.83", "fee_rate_bps": "0",
             "timestamp": TRADE_TS, "transaction_hash": "0xabc"}  # fmt: skip
    keeper.feed(orjson.dumps(trade))
    last = keeper.last_trade(TOKEN_A)
    assert last is not None and (last.price, last.side, last.size) == ("0.301", "SELL", "45.83")
    top = keeper.top(TOKEN_A)
    assert (top.last_trade_price, top.last_trade_side) == ("0.301", "SELL")
    keeper.feed(orjson.dumps({**trade, "asset_id": "untracked"}))  # ignored
    assert keeper.last_trade("untracked") is None


def test_require_resync_marks_tokens_stale(shared_dir):
    keeper = keeper_for(TOKEN_A)
    keeper.feed(frames(shared_dir)[0])
    keeper.drain_tops()
    keeper.require_resync([TOKEN_A], reason="socket closed")
    (top,) = keeper.drain_tops()
    assert top.fresh is False and keeper.resync_reason(TOKEN_A) == "socket closed"


def test_drain_tops_json_matches_drain_tops(shared_dir):
    raw = frames(shared_dir)
    keeper = keeper_for(TOKEN_A)
    for frame in raw[:20]:
        keeper.feed(frame)
    encoded = dict(keeper.drain_tops_json(depth=5))
    top = BookTop.from_json(encoded[TOKEN_A])
    assert len(top.bids) == len(top.asks) == 5
    again = keeper.top(TOKEN_A, depth=5)
    assert again is not None
    assert top == BookTop.from_json(orjson.dumps(again)).with_fresh(
        True, published_at=top.published_at
    )
    book = keeper.book(TOKEN_A)
    assert encode_top(book, depth=5, published_at=1) == orjson.dumps(
        BookTop.from_book(book, depth=5, published_at=1)
    )


def test_untracked_snapshot_and_rest_install_are_refused(shared_dir):
    keeper = BookKeeper()
    keeper.feed(frames(shared_dir)[0])
    assert keeper.book(TOKEN_A) is None
    msg = read_json(shared_dir, "fixtures/polymarket/clob/nt_clob_book_empty_ask_2026-08-03.json")
    assert keeper.install_snapshot(msg) is False
    keeper.track(msg["asset_id"], neg_risk=True)
    assert keeper.install_snapshot(msg) is True
    assert isinstance(keeper.book(msg["asset_id"]), OrderBook)


def _up_to_the_burst(shared_dir, **keeper_options):
    """A keeper fed the recording up to the trade burst's first message only (frame 47): its
    claim is a deferred mismatch on a crossed book, and the burst's rest never comes."""
    raw = frames(shared_dir)
    keeper = keeper_for(TOKEN_A, **keeper_options)
    for frame in raw[:48]:
        keeper.feed(frame)
    return keeper


def test_a_deferred_burst_mismatch_is_published_not_fresh_while_unproven(shared_dir):
    keeper = _up_to_the_burst(shared_dir, burst_grace_ms=60_000)
    tops = {t.token_id: t for t in keeper.drain_tops()}
    assert keeper.last_hash_result[TOKEN_A] == "deferred"
    assert keeper.book(TOKEN_A).is_crossed()
    # Crossed and unverified: nobody may fill against it, yet it is not a resync either.
    assert tops[TOKEN_A].fresh is False
    assert not keeper.needs_resync(TOKEN_A)
    assert keeper.next_deadline() is not None


def test_a_burst_proven_by_its_next_message_is_fresh_again(shared_dir):
    raw = frames(shared_dir)
    keeper = _up_to_the_burst(shared_dir, burst_grace_ms=60_000)
    keeper.drain_tops()
    for frame in raw[48:50]:  # the rest of the burst
        keeper.feed(frame)
    tops = {t.token_id: t for t in keeper.drain_tops()}
    assert keeper.last_hash_result[TOKEN_A] == "inferred"
    assert tops[TOKEN_A].fresh is True and keeper.next_deadline() is None
    assert keeper.stats.hash_mismatched == 0


def test_a_burst_never_proven_within_the_grace_is_a_real_mismatch(shared_dir, monkeypatch):
    keeper = _up_to_the_burst(shared_dir, burst_grace_ms=500)
    keeper.drain_tops()  # deferred now, deadline in 0.5 s
    deadline = keeper.next_deadline()
    assert deadline is not None
    real_monotonic = time.monotonic
    monkeypatch.setattr(time, "monotonic", lambda: max(real_monotonic(), deadline + 0.001))
    tops = {t.token_id: t for t in keeper.drain_tops()}
    assert tops[TOKEN_A].fresh is False
    assert keeper.needs_resync(TOKEN_A)  # held until a snapshot: the ingester fetches one
    assert keeper.resync_reason(TOKEN_A) == "hash mismatch"
    assert keeper.stats.hash_mismatched == 1 and keeper.stats.rejected == {"hash_mismatch": 1}
    assert keeper.next_deadline() is None


def test_a_2024_book_whose_hash_no_known_recipe_reproduces_is_held_not_trusted(shared_dir):
    path = shared_dir / "fixtures/polymarket/ws/nt_ws_book_2024-10.json"
    msg = orjson.loads(path.read_bytes())
    keeper = keeper_for(msg["asset_id"])
    keeper.feed(path.read_bytes())
    tops = {t.token_id: t for t in keeper.drain_tops()}
    assert keeper.book(msg["asset_id"]) is not None  # loaded, kept for the admin to inspect
    assert keeper.needs_resync(msg["asset_id"]) and tops[msg["asset_id"]].fresh is False
    assert keeper.stats.rejected == {"hash_mismatch": 1}


def test_trade_prints_are_drained_once_in_feed_order():
    from marketdata.bus import TradePrint
    from marketdata.messages import BookKeeper

    keeper = BookKeeper(verify="off")
    keeper.track("tok", market="0xm")
    for price, size, side, fee in (("0.5", "10", "SELL", "0"), ("0.51", "2.5", "BUY", "175")):
        keeper.apply(
            {
                "event_type": "last_trade_price",
                "market": "0xm",
                "asset_id": "tok",
                "price": price,
                "side": side,
                "size": size,
                "fee_rate_bps": fee,
                "timestamp": "1790658827000",
                "transaction_hash": None,
            }
        )
    keeper.apply(
        {
            "event_type": "last_trade_price",
            "market": "0xm",
            "asset_id": "untracked",
            "price": "0.1",
            "side": "BUY",
            "size": "1",
            "fee_rate_bps": "0",
            "timestamp": "1790658827000",
            "transaction_hash": None,
        }
    )
    drained = keeper.drain_trades_json()
    prints = [TradePrint.from_json(blob) for _, blob in drained]
    assert [
        (p.token_id, p.price, p.size, p.side, p.timestamp_ms, p.fee_rate_bps) for p in prints
    ] == [
        ("tok", "0.5", "10", "SELL", 1790658827000, "0"),
        ("tok", "0.51", "2.5", "BUY", 1790658827000, "175"),
    ]
    assert keeper.drain_trades_json() == []
