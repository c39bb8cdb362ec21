"""The one feed path (`BookKeeper.feed` → drained tops) on what the retired differential tests
replayed: the recorded sequence in every hash-check mode and drain cadence, str frames as the
websocket delivers them, random valid/odd/broken frames, a timestamp too long to be a time,
and tokens tracked, untracked and tracked again. Assertions are on the books, the counters
and the published tops."""

from __future__ import annotations

import json
from decimal import Decimal

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketdata.book import _PRICE_VALUES
from marketdata.bus import BookTop
from marketdata.messages import BookKeeper

SEQUENCE = "fixtures/polymarket/ws/nt_ws_sequence_book_pricechange_trade_2026-09.jsonl"
TOKEN_A = "76670567130917723816490572615540605537878462672464291990940067659127658071111"
TOKEN_B = "54179564009642723353355316176091991063553046330768303687769988635499280029688"
UNTRACKED = "1" * 77


def recorded(shared_dir) -> list[bytes]:
    return (shared_dir / SEQUENCE).read_bytes().splitlines()


def keeper_for(*tokens: str, **kwargs) -> BookKeeper:
    kwargs.setdefault("burst_grace_ms", 3_600_000)  # expiry is tested on its own
    keeper = BookKeeper(**kwargs)
    for token in tokens:
        keeper.track(token, market="0xm")
    return keeper


def assert_consistent(keeper: BookKeeper) -> None:
    """Every book's sides: one level per price value, sorted ascending by value, no zero size;
    every published top decodes, best first, from that book."""
    for book in keeper._books.values():
        for levels, order in ((book.bids, book._bid_px), (book.asks, book._ask_px)):
            assert sorted(levels) == sorted(order)
            values = [_PRICE_VALUES[p] for p in order]
            assert values == sorted(set(values))
            assert all(Decimal(levels[p]) != 0 for p in order)


@pytest.mark.parametrize("verify", ["entry", "flush", "off"])
@pytest.mark.parametrize("drain_every", [1, 5, 1000])
@pytest.mark.parametrize("as_str", [False, True])
def test_the_recorded_sequence_rebuilds_the_final_book(shared_dir, verify, drain_every, as_str):
    frames = recorded(shared_dir)
    keeper = keeper_for(TOKEN_A, verify=verify)
    published: list[bytes] = []
    for i, frame in enumerate(frames):
        keeper.feed(frame.decode() if as_str else frame)
        if i % drain_every == 0:
            published += [blob for _, blob in keeper.drain_tops_json()]
    published += [blob for _, blob in keeper.drain_tops_json()]
    final = orjson.loads(frames[-1])
    book = keeper.book(TOKEN_A)
    assert book is not None
    assert book.to_wire()["bids"] == final["bids"] and book.to_wire()["asks"] == final["asks"]
    if verify != "off":  # the last trade price is recovered by the hash checks
        assert book.compute_hash() == final["hash"]
        assert keeper.stats.hash_mismatched == 0
    assert keeper.stats.entries_applied == 49 and keeper.stats.rejected == {}
    last = BookTop.from_json(published[-1])
    assert last.fresh and last.hash == final["hash"]
    assert last.bids[0] == [final["bids"][-1]["price"], final["bids"][-1]["size"]]
    assert_consistent(keeper)


# --- random frames: valid, odd and broken --------------------------------------------------

PRICES = ["0.5", "0.50", ".5", "0.1", "0.3", "0.30", "1", "1.0", "0.001", "0.999", "0.0001"]
PRICES += ["0.1234567890123456789012", "0.12345678901234567890120"]  # beyond 18 decimals
BAD_PRICES = ["0", "0.0", "1.5", "-0.1", "abc", "NaN", "", "1e-1", " 0.5", "0.5.1", "٠.5"]
SIZES = ["0", "0.0", ".0", "00", "100", "100.5", "5", "3.", "0.25", "12345678901234567890.5"]
BAD_SIZES = ["-1", "abc", "NaN", "", "1e3", "Infinity", "1,5"]
TIMESTAMPS = ["1790658674035", "1790658674036", "", "0017", "0" * 20 + "1", "9" * 25]


@st.composite
def entries(draw):
    good = draw(st.integers(0, 9)) > 0
    entry = {
        "asset_id": draw(st.sampled_from([TOKEN_A, TOKEN_B, UNTRACKED] + ([] if good else [""]))),
        "price": draw(st.sampled_from(PRICES if good else PRICES + BAD_PRICES)),
        "size": draw(st.sampled_from(SIZES if good else SIZES + BAD_SIZES)),
        "side": draw(st.sampled_from(["BUY", "SELL"] if good else ["BUY", "SELL", "buy", "X"])),
    }
    if draw(st.booleans()):
        entry["hash"] = draw(st.sampled_from(["ab" * 30] + [f"{i:040x}" for i in range(3)]))
    if not good and draw(st.booleans()):
        del entry[draw(st.sampled_from(sorted(entry)))]
    return entry


@st.composite
def frames(draw):
    kind = draw(st.integers(0, 9))
    if kind < 6:
        msg = {
            "market": "0xm",
            "price_changes": draw(st.lists(entries(), max_size=4)),
            "timestamp": draw(st.sampled_from(TIMESTAMPS)),
            "event_type": "price_change",
        }
        style = draw(st.integers(0, 4))
        if style == 0:
            return json.dumps(msg, indent=1).encode()
        if style == 1:
            return orjson.dumps([msg])
        if style == 2:
            return orjson.dumps(msg)[:-1]  # truncated
        return orjson.dumps(msg).decode() if style == 3 else orjson.dumps(msg)
    if kind < 8:
        levels = st.lists(st.tuples(st.sampled_from(PRICES), st.sampled_from(SIZES)), max_size=6)
        return orjson.dumps(
            {"event_type": "book", "market": "0xm",
             "asset_id": draw(st.sampled_from([TOKEN_A, TOKEN_B, UNTRACKED])),
             "timestamp": "1790658674000", "hash": "",
             "bids": [{"price": p, "size": s} for p, s in draw(levels)],
             "asks": [{"price": p, "size": s} for p, s in draw(levels)]}
        )  # fmt: skip
    if kind == 8:
        return ("untrack" if draw(st.booleans()) else "track", draw(st.sampled_from([TOKEN_A])))
    return draw(st.sampled_from([b"PONG", b"{oops", b"[]", b"42", b'{"event_type":"x"}']))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=st.lists(frames(), max_size=25), verify=st.sampled_from(["flush", "off"]))
def test_random_frames_never_raise_and_books_stay_consistent(sequence, verify):
    keeper = keeper_for(TOKEN_A, TOKEN_B, verify=verify)
    for item in sequence:
        if isinstance(item, tuple):
            keeper.untrack(item[1]) if item[0] == "untrack" else keeper.track(item[1])
        else:
            keeper.feed(item)
        for token, blob in keeper.drain_tops_json():
            top = BookTop.from_json(blob)
            book = keeper.book(token)
            assert book is not None and top.token_id == token
            assert top.bids == book.top_levels("BUY", 10)
            assert top.asks == book.top_levels("SELL", 10)
            assert top.fresh == (not keeper.needs_resync(token) and token not in keeper._bursts)
        assert_consistent(keeper)
    assert UNTRACKED not in keeper._books


@pytest.mark.parametrize("ts", ["9" * 19, "9" * 25, "1" + "0" * 5000])
def test_a_timestamp_too_long_for_a_time_is_published_as_null(shared_dir, ts):
    """A frame whose timestamp is digits but far too long to be epoch ms still applies (it is
    the book's claimed time, hashed as sent), and its top says timestamp_ms null: the flush
    neither crashes (orjson refuses ints beyond 64 bits; int() refuses 4,300+ digits) nor
    publishes a number no reader can hold."""
    keeper = keeper_for(TOKEN_A)
    keeper.feed(recorded(shared_dir)[0])
    keeper.drain_tops_json()
    entry = {"asset_id": TOKEN_A, "price": "0.5", "size": "10", "side": "BUY"}
    frame = {"market": "0xm", "timestamp": ts, "event_type": "price_change"}
    frame["price_changes"] = [entry]
    keeper.feed(orjson.dumps(frame))
    assert keeper.stats.entries_applied == 1 and keeper.book(TOKEN_A).timestamp == ts
    blob = dict(keeper.drain_tops_json())[TOKEN_A]
    assert b'"timestamp_ms":null' in blob and BookTop.from_json(blob).timestamp_ms is None


def test_untracked_then_tracked_again_waits_for_a_snapshot(shared_dir):
    raw = recorded(shared_dir)
    keeper = keeper_for(TOKEN_A, TOKEN_B)
    for frame in raw[:10]:
        keeper.feed(frame)
    keeper.untrack(TOKEN_A)
    keeper.untrack(TOKEN_A)  # twice: no-op
    assert keeper.drain_tops_json() == [] and keeper.book(TOKEN_A) is None
    untracked = keeper.stats.entries_untracked
    for frame in raw[10:20]:
        keeper.feed(frame)
    assert keeper.stats.entries_untracked > untracked
    keeper.track(TOKEN_A, market="0xm")
    skipped = keeper.stats.entries_skipped_resync
    for frame in raw[20:30]:  # no snapshot yet: held
        keeper.feed(frame)
    assert keeper.stats.entries_skipped_resync > skipped and keeper.book(TOKEN_A) is None
    keeper.feed(raw[0])  # the subscription snapshot again: a new book, in sync
    assert not keeper.needs_resync(TOKEN_A)
    # The recording's later deltas do not fit that old book: held at the next hash check,
    # published not fresh, until the recording's last frame, a book, brings it back.
    for frame in raw[30:-1]:
        keeper.feed(frame)
    tops = dict(keeper.drain_tops_json())
    assert keeper.needs_resync(TOKEN_A) and b'"fresh":false' in tops[TOKEN_A]
    keeper.feed(raw[-1])
    assert not keeper.needs_resync(TOKEN_A)
    assert BookTop.from_json(dict(keeper.drain_tops_json())[TOKEN_A]).fresh
