"""The compiled feed path (marketdata/_fastbook.c) against the pure-Python one: the same
frames through `BookKeeper(native=True)` and `BookKeeper(native=False)` must leave identical
books, claims, hash outcomes, counters and published tops; the C top encoder, hash text and
mid/spread must equal the Python ones byte for byte. The compiled keeper's per-token state in
C (`_fastbook.Tokens`: claims, dirty tokens, and its copy of liveness, freshness and the last
trade's side) is checked against its own Python state after every step.

Skipped when the extension is not built or POLYSIM_FEED_PURE is set; REQUIRE_FASTBOOK=1
(CI, after `make install` built it) turns that skip into a failure.
"""

from __future__ import annotations

import json
import os
import random
import time
from decimal import Decimal

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketdata import fastbook, messages
from marketdata.book import OrderBook, book_from_levels
from marketdata.bus import _MID_SPREAD, BookTop, encode_top, mid_spread
from marketdata.messages import BookKeeper

if fastbook.native is None:
    reason = "marketdata._fastbook is not built (make install) or POLYSIM_FEED_PURE is set"
    if os.environ.get("REQUIRE_FASTBOOK") == "1" and not os.environ.get("POLYSIM_FEED_PURE"):
        pytest.fail(f"{reason} (REQUIRE_FASTBOOK=1)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)

native = fastbook.native
SEQUENCE = "fixtures/polymarket/ws/nt_ws_sequence_book_pricechange_trade_2026-09.jsonl"
TOKEN_A = "76670567130917723816490572615540605537878462672464291990940067659127658071111"
TOKEN_B = "54179564009642723353355316176091991063553046330768303687769988635499280029688"
UNTRACKED = "1" * 77


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    """Both keepers stamp their tops with the same published_at."""
    monkeypatch.setattr(messages, "now_ms", lambda: 1_790_000_000_000)


def pair(tokens=(TOKEN_A, TOKEN_B), **kwargs) -> tuple[BookKeeper, BookKeeper]:
    # A deferred mismatch expires on the wall clock, read by each keeper at its own moment:
    # out of reach here unless a test sets the grace (and the clock) itself.
    kwargs.setdefault("burst_grace_ms", 3_600_000)
    keepers = BookKeeper(native=True, **kwargs), BookKeeper(native=False, **kwargs)
    for keeper in keepers:
        for token in tokens:
            keeper.track(token, market="0xm")
    return keepers


def state(keeper: BookKeeper) -> dict:
    return {
        "books": {t: b.to_wire() for t, b in keeper._books.items()},
        "best": {t: (b.best_bid_str(), b.best_ask_str()) for t, b in keeper._books.items()},
        "live": sorted(keeper._live),
        "claims": dict(keeper._claims),
        "dirty": sorted(keeper._dirty_tokens()),
        "hash_results": dict(keeper.last_hash_result),
        "stats": keeper.stats.as_dict(),
        "ltp": {t: b.last_trade_price for t, b in keeper._books.items()},
    }


def assert_mirrored(keeper: BookKeeper) -> None:
    """The compiled keeper's C table holds exactly its tracked tokens, and for each one what
    the Python state says: its book, liveness, freshness (live and not in an unproven trade
    burst), last trade side, last hash check time; claims and dirty tokens only there,
    counted right."""
    tokens = keeper._tokens
    assert len(tokens) == len(keeper._meta)
    claims = {}
    for token, meta in keeper._meta.items():
        has_book, live, fresh, _dirty, claim, side, verified_at = tokens.state(token)
        assert has_book == (token in keeper._books), token
        if not has_book:
            assert claim is None
            continue
        assert live == (token in keeper._live), token
        assert fresh == (live and token not in keeper._bursts), token
        assert side == (meta.last_trade.side if meta.last_trade else None), token
        assert verified_at == meta.verified_at, token
        if claim is not None:
            claims[token] = claim
    assert claims == dict(keeper._claims) and tokens.claim_count() == len(claims)
    assert set(tokens.dirty()) <= set(keeper._meta)


def assert_same(fast: BookKeeper, pure: BookKeeper) -> None:
    assert state(fast) == state(pure)
    assert_mirrored(fast)


def drain_same(fast: BookKeeper, pure: BookKeeper) -> list[tuple[str, bytes]]:
    tops_fast, tops_pure = sorted(fast.drain_tops_json()), sorted(pure.drain_tops_json())
    assert tops_fast == tops_pure
    assert_same(fast, pure)
    return tops_fast


def unpack(payload: bytes) -> list[list[bytes]]:
    """The commands of a RESP payload (arrays of bulk strings), as lists of arguments."""
    commands, pos = [], 0
    while pos < len(payload):
        assert payload[pos : pos + 1] == b"*"
        end = payload.index(b"\r\n", pos)
        count, pos = int(payload[pos + 1 : end]), end + 2
        args = []
        for _ in range(count):
            assert payload[pos : pos + 1] == b"$"
            end = payload.index(b"\r\n", pos)
            n = int(payload[pos + 1 : end])
            args.append(payload[end + 2 : end + 2 + n])
            assert payload[end + 2 + n : end + 4 + n] == b"\r\n"
            pos = end + 4 + n
        commands.append(args)
    return commands


def packed_view(packed: tuple[bytes, int, int]) -> dict:
    """What a packed drain stores, independent of the order the tokens were drained in:
    each token's latest top (MSET) and each stream's entry as a sorted list of tops."""
    payload, replies, tops = packed
    commands = unpack(payload)
    assert replies == len(commands)
    if not tops:
        return {}
    mset, *xadds = commands
    assert mset[0] == b"MSET" and len(mset) == 1 + 2 * tops
    streams = {}
    for xadd in xadds:
        assert xadd[0] == b"XADD" and xadd[2:7] == [b"MAXLEN", b"~", xadd[4], b"*", b"tops"]
        streams[xadd[1]] = sorted(xadd[7].split(b"\n"))
    assert sum(len(v) for v in streams.values()) == tops
    return {"latest": dict(zip(mset[1::2], mset[2::2], strict=True)), "streams": streams}


def drain_packed_same(fast: BookKeeper, pure: BookKeeper, n_shards: int = 3) -> None:
    """drain_tops_packed on both paths: the same tops stored, the same streams appended."""
    assert packed_view(fast.drain_tops_packed(n_shards, 99)) == packed_view(
        pure.drain_tops_packed(n_shards, 99)
    )
    assert_same(fast, pure)


# --- the recorded sequence -----------------------------------------------------------------


def recorded(shared_dir) -> list[bytes]:
    return (shared_dir / SEQUENCE).read_bytes().splitlines()


def test_the_scanner_takes_every_recorded_price_change_frame(shared_dir):
    """Not vacuous: the C path really handles the recorded deltas (and nothing else)."""
    keeper = BookKeeper(native=True)
    keeper.track(TOKEN_A)
    handled = [native.feed_price_change(keeper, frame) for frame in recorded(shared_dir)]
    kinds = [orjson.loads(frame)["event_type"] for frame in recorded(shared_dir)]
    assert handled == [kind == "price_change" for kind in kinds]
    assert sum(handled) == 49
    assert keeper.stats.events == {"price_change": 49}


@pytest.mark.parametrize("odd", ['\\"', "\\u0041", "\x01", "\x1f", "é", "\x7f"])
@pytest.mark.parametrize("best", ["", ',"best_bid":"0.4","best_ask":"0.6"'])
def test_the_scanner_leaves_any_escape_control_or_non_ascii_byte_to_python(odd, best):
    """Wherever it sits in a string (the scanner tests 16 bytes at a time, then one by one),
    an escape, a control byte or a non-ASCII character sends the frame to Python: except DEL,
    which is plain ASCII to JSON and is taken. With best_bid/best_ask the entry has the exact
    form Polymarket sends (read by the compact path), without them any other form."""
    for pos in range(0, 40):
        token = TOKEN_A[:pos] + odd + TOKEN_A[pos:]
        entry = '"asset_id":"' + token + '","price":"0.5","size":"1","side":"BUY","hash":"ab"'
        entry += best
        frame = (
            '{"market":"0xm","price_changes":[{' + entry + '}],"timestamp":"1",'
            '"event_type":"price_change"}'
        ).encode()
        keeper = BookKeeper(native=True)
        handled = native.feed_price_change(keeper, frame)
        assert handled == (odd == "\x7f"), (odd, pos)
        assert keeper.stats.entries_untracked == handled  # the C path counted it, or nothing
    clean = frame.replace(odd.encode(), b"")
    assert native.feed_price_change(BookKeeper(native=True), clean) is True


@pytest.mark.parametrize("verify", ["entry", "flush", "off"])
@pytest.mark.parametrize("drain_every", [1, 5, 1000])
def test_golden_sequence_same_on_both_paths(shared_dir, verify, drain_every):
    frames = recorded(shared_dir)
    fast, pure = pair((TOKEN_A,), verify=verify)
    for i, frame in enumerate(frames):
        fast.feed(frame)
        pure.feed(frame)
        assert_same(fast, pure)
        if i % drain_every == 0:  # as encoded tops, and packed for Redis, in turn
            (drain_packed_same if i // drain_every % 2 else drain_same)(fast, pure)
    tops = drain_same(fast, pure)
    final = orjson.loads(frames[-1])
    book = fast.book(TOKEN_A)
    assert book is not None
    if verify != "off":  # the last trade price is recovered by the hash checks
        assert book.compute_hash() == final["hash"]
    assert book.to_wire()["bids"] == final["bids"] and book.to_wire()["asks"] == final["asks"]
    assert fast.stats.entries_applied == 49 and fast.stats.rejected == {}
    if drain_every == 1000:
        assert [t for t, _ in tops] == [TOKEN_A]


@pytest.mark.parametrize("interval_ms", [25, 60])
def test_the_claim_sweep_checks_the_same_due_claims_on_both_paths(shared_dir, interval_ms):
    """verify_interval_ms: a flush checks only the claims of tokens not checked within the
    interval (compiled: picked in C from its copy of each token's last check time)."""
    now = [0.0]
    fast, pure = pair((TOKEN_A, TOKEN_B), verify_interval_ms=interval_ms, clock=lambda: now[0])
    frames = recorded(shared_dir)
    mirror = orjson.loads(frames[0]) | {"asset_id": TOKEN_B, "hash": ""}
    feed_both(fast, pure, [frames[0], orjson.dumps(mirror)])
    checks = []
    for frame in frames[1:]:
        feed_both(fast, pure, [frame])
        now[0] += 0.01
        (drain_packed_same if len(checks) % 2 else drain_same)(fast, pure)
        checks.append(fast.stats.hash_checked)
    assert fast.stats.hash_checked == pure.stats.hash_checked
    # Not every drain checked: the interval held some claims back, and they were checked later.
    assert 1 < len(set(checks)) < len(checks) and fast.stats.hash_checked > 2


def test_golden_sequence_str_frames_as_the_websocket_delivers_them(shared_dir):
    fast, pure = pair((TOKEN_A,))
    for frame in recorded(shared_dir):
        fast.feed(frame.decode())
        pure.feed(frame.decode())
    drain_same(fast, pure)
    final = orjson.loads(recorded(shared_dir)[-1])
    assert fast.book(TOKEN_A).compute_hash() == final["hash"]
    assert fast.stats.hash_mismatched == 0 and fast.stats.entries_applied == 49


# --- random frames: valid, odd and broken --------------------------------------------------

PRICES = ["0.5", "0.50", ".5", "0.1", "0.3", "0.30", "1", "1.0", "0.001", "0.999", "0.0001"]
PRICES += ["0.1234567890123456789012", "0.12345678901234567890120"]  # beyond 18 decimals
BAD_PRICES = ["0", "0.0", "1.5", "-0.1", "abc", "NaN", "", "1e-1", " 0.5", "0.5.1", "٠.5"]
SIZES = ["0", "0.0", ".0", "00", "100", "100.5", "5", "3.", "0.25", "12345678901234567890.5"]
BAD_SIZES = ["-1", "abc", "NaN", "", "1e3", "Infinity", "1,5"]
TOKENS = [TOKEN_A, TOKEN_B, UNTRACKED, ""]

# Hashes and timestamps longer than the C book keeps inline (48 and 24 characters) too.
hashes = st.sampled_from([None, "MISSING", "MISSING", "ab" * 30] + [f"{i:040x}" for i in range(7)])
timestamps = ["1790658674035"] * 4 + [
    "1790658674036", "", "0017", "0" * 20 + "1790658674035", "9" * 25
]  # fmt: skip


@st.composite
def entries(draw):
    good = draw(st.integers(0, 9)) > 0
    entry = {
        "asset_id": draw(st.sampled_from(TOKENS[:3] if good else TOKENS)),
        "price": draw(st.sampled_from(PRICES if good else PRICES + BAD_PRICES)),
        "size": draw(st.sampled_from(SIZES if good else SIZES + BAD_SIZES)),
        "side": draw(st.sampled_from(["BUY", "SELL"] if good else ["BUY", "SELL", "buy", "X"])),
    }
    h = draw(hashes)
    if h != "MISSING":
        entry["hash"] = h
    if draw(st.booleans()):
        entry["best_bid"], entry["best_ask"] = "0.1", "0.9"
    if not good and draw(st.booleans()):
        del entry[draw(st.sampled_from(sorted(entry)))]
    if not good and draw(st.integers(0, 9)) == 0:
        entry[draw(st.sampled_from(["price", "size", "extra"]))] = draw(
            st.sampled_from([0.5, 1, None, True, [], "é"])
        )
    return entry


@st.composite
def price_change_frames(draw):
    msg = {
        "market": draw(st.sampled_from(["0xm"] * 8 + ['0x"q"', "0xé"])),
        "price_changes": draw(st.lists(entries(), max_size=4)),
        "timestamp": draw(st.sampled_from(timestamps)),
        "event_type": "price_change",
    }
    keys = list(msg)
    draw(st.randoms()).shuffle(keys)
    msg = {k: msg[k] for k in keys}
    style = draw(st.integers(0, 19))  # 7..19: the compact bytes Polymarket sends
    if style == 0:
        return json.dumps(msg, indent=1).encode()  # whitespace everywhere
    if style == 1:
        return json.dumps(msg, ensure_ascii=True).encode()  # \u escapes for non-ASCII
    if style == 2:
        return orjson.dumps([msg])  # an array frame
    if style == 3:
        return orjson.dumps(msg).replace(b'"timestamp"', b'"timestamp":"1","timestamp"', 1)
    if style == 4:
        return orjson.dumps({**msg, "extra": "x"})
    if style == 5:
        return orjson.dumps(msg)[:-1]  # truncated: malformed JSON
    if style == 6:
        return orjson.dumps(msg).decode()  # a str frame
    return orjson.dumps(msg)


@st.composite
def other_frames(draw):
    token = draw(st.sampled_from([TOKEN_A, TOKEN_B, UNTRACKED]))
    kind = draw(st.integers(0, 4))
    if kind == 0:
        levels = st.lists(
            st.tuples(st.sampled_from(PRICES), st.sampled_from(SIZES)), min_size=0, max_size=6
        )
        return orjson.dumps(
            {
                "event_type": "book",
                "market": "0xm",
                "asset_id": token,
                "timestamp": "1790658674000",
                "hash": draw(st.sampled_from(["", "0" * 40])),
                "bids": [{"price": p, "size": s} for p, s in draw(levels)],
                "asks": [{"price": p, "size": s} for p, s in draw(levels)],
                "tick_size": "0.001",
            }
        )
    if kind == 1:
        return orjson.dumps(
            {
                "event_type": "last_trade_price",
                "market": "0xm",
                "asset_id": token,
                "price": draw(st.sampled_from(PRICES)),
                "side": "BUY",
                "size": "10",
                "timestamp": "1790658674001",
            }
        )
    if kind == 2:
        return orjson.dumps(
            {"event_type": "price_change", "market": "0xm", "asset_id": token, "changes": []}
        )
    return draw(st.sampled_from([b"PONG", b"{oops", b"[]", b"42", b'{"event_type":"x"}']))


# What the ingester does to a keeper between frames: (un)track a token, put it on hold.
keeper_actions = st.tuples(
    st.sampled_from(["untrack", "track", "require_resync"]), st.sampled_from([TOKEN_A, TOKEN_B])
)

frames_strategy = st.lists(
    st.one_of(price_change_frames(), price_change_frames(), other_frames(), keeper_actions),
    max_size=25,
)


def step(keeper: BookKeeper, frame: bytes | str | tuple[str, str]) -> None:
    if not isinstance(frame, tuple):
        keeper.feed(frame)
    elif frame[0] == "untrack":
        keeper.untrack(frame[1])
    elif frame[0] == "track":
        keeper.track(frame[1], market="0xm")
    else:
        keeper.require_resync([frame[1]])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=frames_strategy,
    verify=st.sampled_from(["entry", "flush", "off"]),
    drains=st.sets(st.integers(0, 25)),
)
def test_random_frames_same_on_both_paths(frames, verify, drains):
    fast, pure = pair(verify=verify)
    snapshot = orjson.dumps(
        {
            "event_type": "book",
            "market": "0xm",
            "asset_id": TOKEN_A,
            "timestamp": "1790658674000",
            "bids": [{"price": "0.1", "size": "5"}, {"price": "0.3", "size": "7"}],
            "asks": [{"price": "0.9", "size": "5"}, {"price": "0.50", "size": "2"}],
        }
    )
    for keeper in (fast, pure):
        keeper.feed(snapshot)
    for i, frame in enumerate(frames):
        step(fast, frame)
        step(pure, frame)
        assert_same(fast, pure)
        if i in drains:
            (drain_packed_same if i % 2 else drain_same)(fast, pure)
    fast.verify_pending(force=True)
    pure.verify_pending(force=True)
    drain_packed_same(fast, pure)


def feed_both(fast: BookKeeper, pure: BookKeeper, frames: list[bytes], *, each=True) -> None:
    for frame in frames:
        fast.feed(frame)
        pure.feed(frame)
        if each:
            assert_same(fast, pure)
    assert_same(fast, pure)


@pytest.mark.parametrize("ending", ["proven", "expired"])
def test_a_burst_mismatch_reaches_the_compiled_tops_as_python_publishes_it(
    shared_dir, monkeypatch, ending
):
    """The recorded trade burst's first claim is a deferred mismatch on a crossed book: the
    compiled flush publishes the token not fresh from its copy of the token's state, then fresh
    once the burst's next messages prove the book, or held once the grace has passed."""
    raw = recorded(shared_dir)
    fast, pure = pair((TOKEN_A,), burst_grace_ms=500)
    feed_both(fast, pure, raw[:48])
    tops = dict(drain_same(fast, pure))
    assert fast.last_hash_result[TOKEN_A] == "deferred" and fast.next_deadline() is not None
    assert b'"fresh":false' in tops[TOKEN_A]
    assert fast._tokens.state(TOKEN_A)[1:3] == (True, False)  # live, not fresh
    if ending == "proven":
        feed_both(fast, pure, raw[48:50])
        tops = dict(drain_same(fast, pure))
        assert fast.last_hash_result[TOKEN_A] == "inferred" and b'"fresh":true' in tops[TOKEN_A]
        assert fast._tokens.state(TOKEN_A)[1:3] == (True, True)
        feed_both(fast, pure, raw[50:])
        drain_packed_same(fast, pure)
    else:
        deadline = max(fast.next_deadline(), pure.next_deadline())
        real_monotonic = time.monotonic
        monkeypatch.setattr(time, "monotonic", lambda: max(real_monotonic(), deadline + 0.001))
        tops = dict(drain_same(fast, pure))
        assert fast.needs_resync(TOKEN_A) and b'"fresh":false' in tops[TOKEN_A]
        assert fast._tokens.state(TOKEN_A)[1:3] == (False, False)
        feed_both(fast, pure, raw[48:])  # skipped while on hold
        assert fast.stats.entries_skipped_resync > 0
        drain_packed_same(fast, pure)


@pytest.mark.parametrize("ts", ["9" * 19, "9" * 25, "1" + "0" * 5000])
def test_a_timestamp_too_long_for_a_time_is_published_as_null_on_both_paths(shared_dir, ts):
    """A frame whose timestamp is digits but far too long to be epoch ms still applies (it is
    the book's claimed time, hashed as sent), and its top says timestamp_ms null: the flush
    neither crashes (orjson refuses ints beyond 64 bits; int() refuses 4,300+ digits) nor
    publishes a number no reader can hold."""
    raw = recorded(shared_dir)
    fast, pure = pair((TOKEN_A,))
    feed_both(fast, pure, raw[:1])
    drain_same(fast, pure)
    frame = orjson.dumps(
        {
            "market": "0xm",
            "price_changes": [{"asset_id": TOKEN_A, "price": "0.5", "size": "10", "side": "BUY"}],
            "timestamp": ts,
            "event_type": "price_change",
        }
    )
    feed_both(fast, pure, [frame])
    assert fast.stats.entries_applied == pure.stats.entries_applied > 0
    assert fast.book(TOKEN_A).timestamp == pure.book(TOKEN_A).timestamp == ts
    assert b'"timestamp_ms":null' in dict(drain_same(fast, pure))[TOKEN_A]
    assert b'"timestamp_ms":null' in encode_top(pure.book(TOKEN_A))
    assert BookTop.from_book(pure.book(TOKEN_A)).timestamp_ms is None
    feed_both(fast, pure, [frame])
    drain_packed_same(fast, pure)


def test_untrack_and_track_again_reset_the_compiled_token_state(shared_dir):
    """Untracking drops the token's row in C with its claim and dirty mark; its entries count
    as untracked; tracked again, it waits for a snapshot like a new token."""
    raw = recorded(shared_dir)
    fast, pure = pair((TOKEN_A, TOKEN_B))
    feed_both(fast, pure, raw[:10])
    assert fast._claims and TOKEN_A in fast._dirty_tokens()
    for keeper in (fast, pure):
        keeper.untrack(TOKEN_A)
        keeper.untrack(TOKEN_A)  # twice: no-op
    assert_same(fast, pure)
    assert not fast._claims and fast._dirty_tokens() == set()
    with pytest.raises(KeyError):
        fast._tokens.state(TOKEN_A)
    feed_both(fast, pure, raw[10:20])
    assert fast.stats.entries_untracked > 0 and fast.stats.entries_skipped_resync > 0
    for keeper in (fast, pure):
        keeper.track(TOKEN_A, market="0xm")
    feed_both(fast, pure, raw[20:30])  # no snapshot yet: skipped
    assert fast._tokens.state(TOKEN_A)[0] is False
    feed_both(fast, pure, raw[:1])  # the subscription snapshot again: a new book, live
    assert fast._tokens.state(TOKEN_A)[:3] == (True, True, True)
    drain_packed_same(fast, pure)
    # The recording's later deltas do not fit that old book: held at the next hash check,
    # until the recording's last frame, a book, brings it back in sync.
    feed_both(fast, pure, raw[30:-1])
    drain_same(fast, pure)
    assert fast.needs_resync(TOKEN_A) and fast._tokens.state(TOKEN_A)[1] is False
    feed_both(fast, pure, raw[-1:])
    drain_same(fast, pure)
    assert not fast.needs_resync(TOKEN_A) and fast._tokens.state(TOKEN_A)[1] is True


@pytest.mark.parametrize("verify", ["flush", "off"])
def test_many_tokens_tracked_untracked_and_held_same_on_both_paths(verify):
    """1,500 tokens: the C table grows past its first size and loses rows from the middle of
    its probe runs (untrack), the dirty list spans many tokens between drains, claims come and
    go, mismatches hold tokens and snapshots bring them back: the same books, state, counters
    and published tops on both paths."""
    rng = random.Random(20260929)
    tokens = [str(rng.getrandbits(250)).rjust(77, "1") for _ in range(1500)]
    fast, pure = pair(tokens, verify=verify)
    prices = [f"0.{i:02d}" for i in range(1, 100)]

    def snapshot(token: str) -> bytes:
        bids = rng.sample(prices[:45], 5)
        asks = rng.sample(prices[55:], 5)
        return orjson.dumps(
            {"event_type": "book", "market": "0xm", "asset_id": token, "timestamp": "1",
             "bids": [{"price": p, "size": "10"} for p in bids],
             "asks": [{"price": p, "size": "10"} for p in asks]}
        )  # fmt: skip

    feed_both(fast, pure, [snapshot(t) for t in tokens[:1400]], each=False)  # 100 without
    tracked = set(tokens)
    for i in range(1, 1001):
        entries = []
        for _ in range(rng.randint(1, 3)):
            entry = {
                "asset_id": rng.choice(tokens),
                "price": rng.choice(prices),
                "size": rng.choice(["0", "5", "12.5"]),
                "side": rng.choice(["BUY", "SELL"]),
            }
            if rng.random() < 0.02:  # a (wrong) hash: a claim, a mismatch at the next check
                entry["hash"] = f"{rng.getrandbits(160):040x}"
            entries.append(entry)
        frame = {"market": "0xm", "price_changes": entries, "timestamp": str(i),
                 "event_type": "price_change"}  # fmt: skip
        fast.feed(orjson.dumps(frame))
        pure.feed(orjson.dumps(frame))
        if i % 97 == 0:  # the ingester: drop some tokens, take back others, resync the held
            gone = set(rng.sample(sorted(tracked), 40))
            out = sorted(set(tokens) - tracked)
            back = set(rng.sample(out, min(30, len(out))))
            held = sorted(fast.resync_wanted() - gone)[:50]
            for keeper in (fast, pure):
                for token in sorted(gone):
                    keeper.untrack(token)
                for token in sorted(back):
                    keeper.track(token, market="0xm")
            tracked = (tracked - gone) | back
            feed_both(fast, pure, [snapshot(t) for t in held + sorted(back)], each=False)
        if i % 50 == 0:
            (drain_packed_same if i % 100 else drain_same)(fast, pure)
    drain_packed_same(fast, pure)
    assert fast.stats.entries_applied > 1000 and fast.stats.entries_untracked > 0
    assert fast.stats.entries_skipped_resync > 0
    assert len(fast._tokens) == len(tracked) > 1024 // 2  # grown at least once
    if verify == "flush":
        assert fast.stats.hash_mismatched > 0


def test_a_bad_entry_sends_the_whole_frame_to_python_and_is_counted_once():
    fast, pure = pair()
    for keeper in (fast, pure):
        keeper.feed(
            orjson.dumps(
                {"event_type": "book", "market": "0xm", "asset_id": TOKEN_A, "timestamp": "1",
                 "bids": [{"price": "0.2", "size": "1"}], "asks": []}
            )
        )  # fmt: skip
    frame = orjson.dumps(
        {
            "market": "0xm",
            "price_changes": [
                {"asset_id": TOKEN_A, "price": "0.3", "size": "4", "side": "BUY"},
                {"asset_id": TOKEN_A, "price": "0.4", "size": "-4", "side": "BUY"},
            ],
            "timestamp": "2",
            "event_type": "price_change",
        }
    )
    assert native.feed_price_change(fast, frame) is False  # nothing applied by C ...
    assert fast.book(TOKEN_A).bids == {"0.2": "1"}
    fast.feed(frame)  # ... the Python path applies the good entry and rejects the bad one
    pure.feed(frame)
    assert_same(fast, pure)
    assert fast.book(TOKEN_A).bids == {"0.2": "1", "0.3": "4"}
    assert fast.stats.rejected == {"bad_size": 1}


# --- encoders ------------------------------------------------------------------------------


def random_book(rng: random.Random) -> OrderBook:
    def price() -> str:
        places = rng.choice([1, 2, 3, 4, 18, 20])
        text = format(Decimal(rng.randint(1, 10**places)).scaleb(-places), "f")
        return text + "0" * rng.randint(0, 2) if "." in text else text

    def size() -> str:
        return rng.choice(["1", "0.5", "100", "12.34", "99999999.99", "7."])

    book = book_from_levels(
        market=rng.choice(["0xm", 'a"b', "é", "tab\t", "\\"]),
        asset_id=rng.choice([TOKEN_A, "x" * 5, "ü"]),
        bids=[(price(), size()) for _ in range(rng.randint(0, 30))],
        asks=[(price(), size()) for _ in range(rng.randint(0, 30))],
        tick_size=rng.choice([None, "0.01", "0.001"]),
        min_order_size=rng.choice(["5", "15"]),
        neg_risk=rng.choice([True, False]),
    )
    book.timestamp = rng.choice(["1790658674035", "", "abc", "0017", "9" * 25, "١٢"])
    book.hash = rng.choice(["", "0" * 40, 'q"'])
    book.last_trade_price = rng.choice(["", "0.5", "0.123"])
    return book


def test_encode_top_hash_text_and_mid_spread_match_python():
    rng = random.Random(20260929)
    checked = 0
    for _ in range(3000):
        book = random_book(rng)
        depth = rng.choice([0, 1, 10, 50])
        fresh, side = rng.choice([True, False]), rng.choice([None, "BUY", "SELL"])
        _MID_SPREAD.clear()
        blob = native.encode_top(book, fresh, side, depth, 1234, mid_spread)
        if blob is None:  # only a timestamp that may not fit 64 bits takes the Python encoder
            assert len(book.timestamp.lstrip("0")) > 18
            continue
        assert blob == encode_top(
            book, fresh=fresh, last_trade_side=side, depth=depth, published_at=1234
        )
        ts, ltp = rng.choice([book.timestamp, "1"]), rng.choice(["", "0.5", "é"])
        assert native.hash_text(book, ts, ltp) == book._hash_text(ts, ltp)
        checked += 1
    assert checked > 2500


def test_compute_hash_uses_the_compiled_text_and_agrees(shared_dir):
    from marketdata import book as book_module

    assert book_module._native_hash_text is native.hash_text
    first = orjson.loads(recorded(shared_dir)[0])  # the subscription snapshot: every field
    book = OrderBook.from_snapshot(first)
    assert book.compute_hash() == first["hash"] == "5511583ad6f3eb4678e0a374e0cc2bd3b1975d07"


def test_native_true_requires_the_module(monkeypatch):
    monkeypatch.setattr(fastbook, "native", None)
    with pytest.raises(ValueError, match="not available"):
        BookKeeper(native=True)
    assert BookKeeper()._native is None


# --- the C-held book against OrderBook -----------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(
                st.just("set"),
                st.sampled_from(["BUY", "SELL"]),
                st.sampled_from(PRICES),
                st.sampled_from(SIZES),
            ),
            st.tuples(
                st.just("snapshot"),
                st.lists(st.tuples(st.sampled_from(PRICES), st.sampled_from(SIZES)), max_size=5),
                st.lists(st.tuples(st.sampled_from(PRICES), st.sampled_from(SIZES)), max_size=5),
            ),
            st.tuples(
                st.just("bad"),
                st.sampled_from(["BUY", "SELL", "x"]),
                st.sampled_from(PRICES + BAD_PRICES),
                st.sampled_from(SIZES + BAD_SIZES),
            ),
        ),
        max_size=30,
    )
)
def test_native_order_book_behaves_as_order_book(ops):
    assert fastbook.NativeOrderBook is not None
    books = [
        cls.from_snapshot({"market": "0xm", "asset_id": TOKEN_A, "timestamp": "5"})
        for cls in (fastbook.NativeOrderBook, OrderBook)
    ]
    for op in ops:
        errors = []
        for book in books:
            try:
                if op[0] == "snapshot":
                    book.replace_from_snapshot(
                        {
                            "bids": [{"price": p, "size": s} for p, s in op[1]],
                            "asks": [{"price": p, "size": s} for p, s in op[2]],
                        }
                    )
                else:
                    book.apply_change(op[1], op[2], op[3])
                errors.append(None)
            except ValueError as exc:
                errors.append(str(exc))
        assert errors[0] == errors[1]
        native_book, pure_book = books
        assert native_book.to_wire() == pure_book.to_wire()
        assert native_book.bids == pure_book.bids and native_book.asks == pure_book.asks
        assert native_book._bid_px == pure_book._bid_px
        assert native_book._ask_px == pure_book._ask_px
        assert len(native_book) == len(pure_book)
        for side in ("BUY", "SELL"):
            for depth in (None, 0, 1, 3):
                assert native_book.levels(side, depth) == pure_book.levels(side, depth)
            assert native_book.top_levels(side, 2) == pure_book.top_levels(side, 2)
            assert native_book.top_levels_json(side, 2) == pure_book.top_levels_json(side, 2)
            for price in PRICES + BAD_PRICES:
                assert native_book.level_size(side, price) == pure_book.level_size(side, price)
        for method in ("best_bid_str", "best_ask_str", "best_bid", "best_ask", "mid", "spread"):
            assert getattr(native_book, method)() == getattr(pure_book, method)(), method
        assert native_book.is_crossed() == pure_book.is_crossed()
        assert native_book.compute_hash() == pure_book.compute_hash()
        assert native_book._hash_text("1", "0.5") == pure_book._hash_text("1", "0.5")
        assert repr(native_book) == repr(pure_book)
        # the C encoder keeps each side's top between calls while no change reaches it
        assert native.encode_top(native_book, True, "BUY", 2, 9, mid_spread) == encode_top(
            pure_book, last_trade_side="BUY", depth=2, published_at=9
        )


@settings(max_examples=200, deadline=None)
@given(
    items=st.lists(
        st.tuples(st.sampled_from(["a", "b", "tok", "é", TOKEN_A]), st.binary(max_size=20)),
        min_size=1,  # the publisher never packs an empty batch; prints alone take Python
        max_size=12,
    ),
    n_shards=st.integers(1, 5),
    maxlen=st.integers(1, 10**6),
)
def test_compiled_pack_publish_is_byte_for_byte_the_python_one(items, n_shards, maxlen):
    from marketdata.publisher import pack_publish

    assert native.pack_publish(items, n_shards, maxlen, b"md:book:", b"md:updates:") == (
        pack_publish(items, n_shards, maxlen)
    )


def keeper_with_books(rng: random.Random, n: int) -> BookKeeper:
    keeper = BookKeeper(native=True, verify="off")
    for i in range(n):
        token = f"{i}{TOKEN_A[1:]}"
        keeper.track(token, market=f"0xm{i % 3}")
        keeper.feed(
            orjson.dumps(
                {
                    "event_type": "book",
                    "market": f"0xm{i % 3}",
                    "asset_id": token,
                    # 19 digits: not a time, published as null (bus.timestamp_ms)
                    "timestamp": "1" + "0" * 18 if i == 3 else "1790658674000",
                    "bids": [{"price": p, "size": rng.choice(SIZES[1:])} for p in PRICES[:4]],
                    "asks": [{"price": p, "size": rng.choice(SIZES[1:])} for p in PRICES[4:]],
                }
            )
        )
    return keeper


@pytest.mark.parametrize("n_shards", [1, 4])
def test_encode_pack_is_pack_publish_of_encode_tops_byte_for_byte(n_shards):
    from marketdata.publisher import pack_publish

    rng = random.Random(11)
    keeper = keeper_with_books(rng, 12)
    tokens = sorted(keeper._books)
    long_ts = keeper._books[f"3{TOKEN_A[1:]}"]
    long_top = native.encode_top(long_ts, True, None, 10, 1, mid_spread)
    assert long_top == encode_top(long_ts, fresh=True, depth=10, published_at=1)
    assert b'"timestamp_ms":null' in long_top
    trade = {"event_type": "last_trade_price", "market": "0xm2", "asset_id": tokens[2]}
    trade |= {"price": "0.5", "side": "SELL", "size": "3", "timestamp": "1"}
    keeper.feed(orjson.dumps(trade))
    keeper.require_resync([tokens[5]])  # one published stale
    keeper.track("tracked, no book yet")
    assert keeper.last_trade(tokens[2]) is not None and keeper.needs_resync(tokens[5])
    for round_ in range(6):
        order = rng.sample(tokens, len(tokens) - round_)  # some left out
        order[1:1] = ["not tracked", "tracked, no book yet"]
        args = (keeper._tokens, 10, 1234 + round_, mid_spread)
        items = native.encode_tops(order, *args, messages._encode_top_kw)
        packed = native.encode_pack(
            order, *args, messages._encode_top_kw, n_shards, 77, b"md:book:", b"md:updates:"
        )
        assert packed == (*pack_publish(items, n_shards, 77), len(items))
        assert [t for t, _ in items] == [t for t in order if t in keeper._books]
        for token, blob in items:  # the C encoder's tops are the Python encoder's
            book = keeper._books[token]
            last = keeper._meta[token].last_trade
            assert blob == encode_top(
                book,
                fresh=token != tokens[5],
                last_trade_side=last.side if last else None,
                depth=10,
                published_at=1234 + round_,
            )
        # changes between rounds: the caches must follow
        for token in rng.sample(tokens, 4):
            side, price = rng.choice(["BUY", "SELL"]), rng.choice(PRICES)
            keeper._books[token].apply_change(side, price, rng.choice(SIZES))
        keeper._books[tokens[round_]].market = f"0xnew{round_}"
    assert native.encode_pack(set(), *args, messages._encode_top_kw, 4, 77, b"a", b"b") == (
        b"",
        0,
        0,
    )
    with pytest.raises(ValueError, match="distinct"):
        native.encode_pack(
            [tokens[0], tokens[0]], *args, messages._encode_top_kw, 4, 77, b"a", b"b"
        )


def test_deep_books_stay_equal_under_random_changes():
    """Hundreds of levels: inserts, updates and deletes far from the best price too (the C
    side walks in from the best end, then bisects)."""
    rng = random.Random(7)
    prices = [format(Decimal(i).scaleb(-3), "f") for i in range(1, 1000)]
    prices += [p + "0" for p in prices[::7]]  # other spellings of the same values
    books = [
        cls.from_snapshot({"market": "0xm", "asset_id": TOKEN_A, "timestamp": "5"})
        for cls in (fastbook.NativeOrderBook, OrderBook)
    ]
    for step in range(4000):
        side, price = rng.choice(["BUY", "SELL"]), rng.choice(prices)
        size = rng.choice(["0", "1", "22.5", "300"]) if step % 3 else "7"
        for book in books:
            book.apply_change(side, price, size)
            if step % 1000 == 999:  # the head of the top is cached too
                book.market = f"0xm{step}"
        # The top's levels are cached per side until a change lands among them: most of
        # these changes are deeper, some are not.
        depth = 10 if step % 500 else 3
        assert native.encode_top(books[0], True, None, depth, step, mid_spread) == encode_top(
            books[1], depth=depth, published_at=step
        )
        if step % 250 == 0:
            assert books[0].to_wire() == books[1].to_wire()
    native_book, pure_book = books
    assert len(pure_book) > 300
    assert native_book.to_wire() == pure_book.to_wire()
    assert native_book.compute_hash() == pure_book.compute_hash()
    for side in ("BUY", "SELL"):
        assert native_book.levels(side) == pure_book.levels(side)
