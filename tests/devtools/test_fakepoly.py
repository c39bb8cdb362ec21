"""The fake Polymarket speaks the real protocol: a `websockets` client subscribes, pings, receives
replayed and walked events; faults (drops, malformed frames, stalls, resolution) are real."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from devtools.fakepoly import DEMO_DATA_DIR, FakePolymarket, book_hash
from marketdata import resolution as rs
from marketdata.clients import ClobClient, GammaClient

SEQUENCE = "ws/nt_ws_sequence_book_pricechange_trade_2026-09.jsonl"
SEQ_TOKEN = "76670567130917723816490572615540605537878462672464291990940067659127658071111"
DK_TOKEN = "98022490269692409998126496127597032490334070080325855126491859374983463996227"
CEASEFIRE_CID = "0xd57eed0d44f5b8ca54925d8d6ff440b146b3e6e071da18136ee3ee572d34479e"
BTC_CID = "0x78443f961b9a65869dcb39359de9960165c7e5cbad0904eac7f29cd77872a63b"
BTC_UP = "104239898038807136052399800151408521467737075933964991162589336683346093173875"
BTC_DOWN = "71183960810705820955071415844881728181970340514894896943812046065452395013351"


@pytest.fixture
def demo():
    server = FakePolymarket(DEMO_DATA_DIR, seed=7).start_in_thread()
    try:
        yield server
    finally:
        server.stop()


def subscribe(ws, assets, custom=True, initial_dump=True):
    """The subscription as clients send it now (polymarket.md §9)."""
    ws.send(
        json.dumps(
            {"type": "market", "assets_ids": assets, "custom_feature_enabled": custom,
             "initial_dump": initial_dump, "level": 2}
        )
    )  # fmt: skip


def recv_json(ws, timeout=3):
    return json.loads(ws.recv(timeout=timeout))


def expect_silence(ws, seconds=0.3):
    with pytest.raises(TimeoutError):
        ws.recv(timeout=seconds)


def recomputed(book):
    return book_hash(
        market=book["market"],
        asset_id=book["asset_id"],
        timestamp=book["timestamp"],
        bids=book["bids"],
        asks=book["asks"],
        min_order_size=book.get("min_order_size", "5"),
        tick_size=book["tick_size"],
        neg_risk=book.get("neg_risk", False),
        last_trade_price=book["last_trade_price"],
    )


# --- Hash recipe ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["clob/nt_clob_book_empty_ask_2026-08-03.json", "ws/nt_ws_book_captured_2026-08.json"]
)
def test_book_hash_recipe_reproduces_recorded_hashes(fixtures_dir, name):
    book = json.loads((fixtures_dir / name).read_text())

    assert recomputed(book) == book["hash"]


# --- Websocket ------------------------------------------------------------------------------------
def test_subscribe_sends_book_snapshots_as_one_array(fake, fixtures_dir):
    first_recorded = json.loads((fixtures_dir / SEQUENCE).read_text().splitlines()[0])

    with connect(fake.ws_url) as ws:
        subscribe(ws, [SEQ_TOKEN, DK_TOKEN, "999"])
        frame = recv_json(ws)

    assert isinstance(frame, list) and len(frame) == 2  # unknown assets have no book
    by_asset = {book["asset_id"]: book for book in frame}
    assert by_asset[SEQ_TOKEN] == first_recorded  # identical to the recorded snapshot
    for book in frame:
        assert book["event_type"] == "book"
        assert {"tick_size", "last_trade_price"} <= set(book)
        bids = [Decimal(level["price"]) for level in book["bids"]]
        asks = [Decimal(level["price"]) for level in book["asks"]]
        assert bids == sorted(bids) and asks == sorted(asks, reverse=True)  # best last
    assert by_asset[DK_TOKEN]["hash"] == "abf87d01d46fbb3a5227f2af0f80492dcb345638"


def test_ping_pong_after_a_subscription(fake):
    with connect(fake.ws_url) as ws:
        subscribe(ws, [])
        ws.send("PING")
        assert ws.recv(timeout=2) == "PONG"


def test_a_ping_before_any_subscription_closes_the_socket(fake):
    with connect(fake.ws_url) as ws:
        ws.send('{"operation": "noise"}')  # not a subscription either
        ws.send("PING")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=2)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_initial_dump_false_sends_no_books(fake):
    with connect(fake.ws_url) as ws:
        subscribe(ws, [DK_TOKEN], initial_dump=False)
        expect_silence(ws)
        ws.send("PING")
        assert ws.recv(timeout=2) == "PONG"  # subscribed all the same


def test_replay_of_the_recorded_sequence_arrives_in_order(fake, fixtures_dir):
    lines = (fixtures_dir / SEQUENCE).read_text().splitlines()

    with connect(fake.ws_url) as ws, connect(fake.ws_url) as other:
        subscribe(ws, [SEQ_TOKEN])
        recv_json(ws)  # snapshot
        subscribe(other, [DK_TOKEN])
        recv_json(other)

        sent = fake.replay(lines)
        received = [ws.recv(timeout=3) for _ in lines]
        expect_silence(other)  # not subscribed to these tokens

    assert sent == len(lines) == 51
    assert received == lines  # verbatim, in order
    # The served REST book followed the stream: it now holds the final recorded book's levels.
    last = json.loads(lines[-1])
    with ClobClient(fake.clob_url) as clob:
        book = clob.book(SEQ_TOKEN)
    assert (book["bids"], book["asks"], book["timestamp"]) == (
        last["bids"],
        last["asks"],
        last["timestamp"],
    )


def test_subscribe_and_unsubscribe_operations(fake):
    with connect(fake.ws_url) as ws:
        subscribe(ws, [])
        ws.send(json.dumps({"operation": "subscribe", "assets_ids": [DK_TOKEN]}))
        snapshot = recv_json(ws)
        ws.send(json.dumps({"operation": "unsubscribe", "assets_ids": [DK_TOKEN]}))
        ws.send("PING")
        assert ws.recv(timeout=2) == "PONG"  # the unsubscribe has been processed

        fake.replay([{"event_type": "last_trade_price", "asset_id": DK_TOKEN, "price": "0.5"}])
        fake.send_raw("sentinel")

        assert ws.recv(timeout=2) == "sentinel"
    assert [book["asset_id"] for book in snapshot] == [DK_TOKEN]


def test_drop_connections_closes_every_socket(fake):
    with connect(fake.ws_url) as first, connect(fake.ws_url) as second:
        for ws in (first, second):
            subscribe(ws, [])
            ws.send("PING")
            assert ws.recv(timeout=2) == "PONG"

        assert fake.drop_connections() == 2

        for ws in (first, second):
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=2)
    # and the server keeps accepting new ones
    with connect(fake.ws_url) as ws:
        subscribe(ws, [])
        ws.send("PING")
        assert ws.recv(timeout=2) == "PONG"


def test_send_raw_delivers_malformed_text(fake):
    with connect(fake.ws_url) as ws:
        subscribe(ws, [])
        ws.send("PING")
        ws.recv(timeout=2)

        assert fake.send_raw('{"event_type": "book", "asset_id": ') == 1

        assert ws.recv(timeout=2) == '{"event_type": "book", "asset_id": '


def test_pause_stops_sending_without_closing(fake):
    with connect(fake.ws_url) as ws:
        subscribe(ws, [])
        fake.pause()
        ws.send("PING")
        expect_silence(ws)
        fake.send_raw("lost while paused")

        fake.resume()
        ws.send("PING")

        assert ws.recv(timeout=2) == "PONG"  # the connection survived; nothing queued
        assert fake.frames_dropped == 2


def test_client_messages_that_are_not_json_are_ignored(fake):
    with connect(fake.ws_url) as ws:
        subscribe(ws, [])
        ws.send("{oops")
        ws.send("PING")
        assert ws.recv(timeout=2) == "PONG"


# --- Resolution -----------------------------------------------------------------------------------
def test_resolve_market_reaches_every_source(fake):
    tokens = fake.pairs[CEASEFIRE_CID]
    # Start from an unresolved state of the recorded market.
    fake.clob[CEASEFIRE_CID]["closed"] = False
    fake.gamma[CEASEFIRE_CID]["closed"] = False

    with connect(fake.ws_url) as custom, connect(fake.ws_url) as plain:
        subscribe(custom, tokens, custom=True)
        subscribe(plain, tokens, custom=False)
        for ws in (custom, plain):
            ws.send("PING")
            assert ws.recv(timeout=2) == "PONG"

        fake.resolve_market(CEASEFIRE_CID, tokens[1])
        message = recv_json(custom)
        expect_silence(plain)  # market_resolved is a custom-feature event

    with ClobClient(fake.clob_url) as clob, GammaClient(fake.gamma_url) as gamma:
        clob_market = clob.market(CEASEFIRE_CID)
        gamma_market = gamma.get_market("1812085")
        verdicts = [
            rs.verdict_from_ws(message),
            rs.verdict_from_clob(clob_market),
            rs.verdict_from_gamma(gamma_market),
        ]
        with pytest.raises(Exception) as missing:
            clob.book(tokens[0])

    assert message["winning_asset_id"] == tokens[1] and message["winning_outcome"] == "No"
    assert {(v.state, v.winner_token_id) for v in verdicts} == {(rs.RESOLVED, tokens[1])}
    assert gamma_market["umaResolutionStatus"] == "resolved"
    assert gamma_market["outcomePrices"] == ["0", "1"]
    assert getattr(missing.value, "status", None) == 404  # books are gone after resolution


def test_fifty_fifty_resolution(demo):
    cid = next(c for c, m in demo.gamma.items() if m["slug"].startswith("synthetic-port-ellis"))
    tokens = demo.pairs[cid]

    with connect(demo.ws_url) as ws:
        subscribe(ws, tokens)
        recv_json(ws)
        message = demo.resolve_market(cid, None)
        received = recv_json(ws)

    with ClobClient(demo.clob_url) as clob, GammaClient(demo.gamma_url) as gamma:
        clob_verdict = rs.verdict_from_clob(clob.market(cid))
        gamma_verdict = rs.verdict_from_gamma(gamma.get_market(demo.gamma[cid]["id"]))

    assert received == message
    assert rs.verdict_from_ws(received).state == rs.CLOSED_PENDING  # no winner on the socket
    for verdict in (clob_verdict, gamma_verdict):
        assert verdict.state == rs.VOID
        assert verdict.payouts == {tokens[0]: Decimal("0.5"), tokens[1]: Decimal("0.5")}


# --- Synthetic walk -------------------------------------------------------------------------------
def test_walk_emits_mirrored_price_changes_with_correct_hashes(demo):
    kinds: set[str] = set()
    with connect(demo.ws_url) as ws, ClobClient(demo.clob_url) as clob:
        subscribe(ws, list(demo.books))
        recv_json(ws)
        for _ in range(40):
            messages = demo.walk_step()
            received = [recv_json(ws) for _ in messages]
            assert received == messages
            for message in messages:
                kinds.add(message["event_type"])
            last_for = {}
            for message in messages:
                if message["event_type"] == "price_change":
                    a, b = message["price_changes"]
                    assert Decimal(a["price"]) + Decimal(b["price"]) == 1
                    assert {a["side"], b["side"]} == {"BUY", "SELL"}
                    assert a["size"] == b["size"]
                    for entry in (a, b):
                        last_for[entry["asset_id"]] = entry["hash"]
                elif message["event_type"] == "book":
                    last_for[message["asset_id"]] = message["hash"]
            for token, expected in last_for.items():
                book = clob.book(token)
                assert book["hash"] == expected == recomputed(book)
                assert Decimal(book["bids"][-1]["price"]) < Decimal(book["asks"][-1]["price"])
    assert kinds == {"price_change", "last_trade_price", "book"}


def test_walk_is_labelled_synthetic_and_seeds_missing_books(fixtures_dir):
    server = FakePolymarket(fixtures_dir, walk=True, walk_interval=0.02, seed=1).start_in_thread()
    try:
        meta = httpx.get(f"{server.base_url}/fakepoly/meta").json()
        with connect(server.ws_url) as ws:
            subscribe(ws, [BTC_UP, BTC_DOWN])
            snapshot = recv_json(ws)
            event = recv_json(ws, timeout=5)  # the walk task is running
    finally:
        server.stop()

    assert meta["synthetic_walk"] is True
    assert {BTC_UP, BTC_DOWN} <= set(meta["synthetic_books"])
    assert meta["dataset"]["synthetic"] is False  # the metadata itself is recorded
    assert {b["asset_id"] for b in snapshot} == {BTC_UP, BTC_DOWN}
    assert event["event_type"] in {"price_change", "last_trade_price", "book"}


# --- HTTP surface ---------------------------------------------------------------------------------
def test_gamma_surface_rules(fake):
    with httpx.Client(base_url=fake.gamma_url) as http:
        legacy = http.get("/markets", params={"limit": 100})
        with_offset = http.get("/markets/keyset", params={"offset": 5})
        too_big = http.get("/markets/keyset", params={"limit": 101})
        bad_cursor = http.get("/markets/keyset", params={"after_cursor": "garbage"})
        by_slug = http.get("/markets/slug/russia-x-ukraine-ceasefire-by-end-of-2027")

    assert all(not m.get("closed") for m in legacy.json())  # implicit closed=false
    assert "Sunset" in legacy.headers
    assert with_offset.status_code == too_big.status_code == bad_cursor.status_code == 400
    assert "error" in too_big.json()
    assert by_slug.json()["conditionId"] == CEASEFIRE_CID


def test_demo_dataset_is_synthetic_consistent_and_hashed(demo):
    meta = httpx.get(f"{demo.base_url}/fakepoly/meta").json()

    assert meta["dataset"]["synthetic"] is True
    assert "SYNTHETIC" in meta["dataset"]["label"]
    assert meta["gamma_markets"] == 10 and meta["books"] == 18
    with ClobClient(demo.clob_url) as clob:
        for cid, (a, b) in demo.pairs.items():
            if demo.gamma[cid].get("closed"):
                continue
            book_a, book_b = clob.book(a), clob.book(b)
            assert book_a["hash"] == recomputed(book_a)
            # the second token's book mirrors the first: bid p ↔ ask 1−p, same size
            mirrored = {(1 - Decimal(x["price"]), x["size"]) for x in book_a["asks"]}
            assert {(Decimal(x["price"]), x["size"]) for x in book_b["bids"]} == mirrored
    titles = [e["title"] for e in demo.events.values()]
    assert all("SYNTHETIC" in t for t in titles)


def test_async_start_and_stop():
    async def main():
        server = FakePolymarket(DEMO_DATA_DIR)
        await server.start()
        try:
            async with websockets.connect(server.ws_url) as ws:
                await ws.send('{"type": "market", "assets_ids": []}')
                await ws.send("PING")
                return await asyncio.wait_for(ws.recv(), 2)
        finally:
            await server.stop()

    assert asyncio.run(main()) == "PONG"
