"""The websocket ingester end to end: the real websocket and REST clients against the fake
Polymarket on loopback, publishing to the price bus on the test's Redis."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable

import pytest

from devtools.fakepoly import FakePolymarket
from marketdata.bus import RedisBus, now_ms
from marketdata.clients import ClobClient
from marketdata.ingest import IngestConfig, Ingester, TokenInfo, backoff_delay

SEQUENCE = "fixtures/polymarket/ws/nt_ws_sequence_book_pricechange_trade_2026-09.jsonl"
TOKEN_A = "76670567130917723816490572615540605537878462672464291990940067659127658071111"
CONDITION = "0x285746de0e4f751fd4dc8f9dc2cecd0101ba9ad0096a43145ed9643b09514f01"


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.01)
    return time.monotonic() - start


@pytest.fixture
def sequence(shared_dir):
    lines = (shared_dir / SEQUENCE).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


# What run_stream gives the feed's client: a Redis that stops answering fails a call quickly.
FEED_CLIENT = {"socket_timeout": 2.0, "socket_connect_timeout": 1.0}


class RunningIngester:
    """An Ingester on its own event loop in a background thread."""

    def __init__(
        self,
        fake: FakePolymarket,
        redis_url: str,
        tokens: list[str],
        ping: float = 0.3,
        heartbeat: float = 0.1,
        **config: float,
    ) -> None:
        self.bus = RedisBus.from_url(redis_url, client_options=FEED_CLIENT)
        infos = {t: TokenInfo(t, CONDITION, "5", False, None) for t in tokens}
        options = {
            "ping_seconds": ping,
            "dead_seconds": ping * 1.5,
            "backoff_base": 0.05,
            "backoff_cap": 0.5,
            "refresh_seconds": 3600,
            "health_seconds": 3600,
            "heartbeat_seconds": heartbeat,
        }
        self.infos = infos
        self.ingester = Ingester(
            config=IngestConfig(ws_url=fake.ws_url, **(options | config)),  # type: ignore[arg-type]
            clob=ClobClient(fake.clob_url),
            bus=self.bus,
            token_source=lambda: self.infos,
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.ingester.run())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.ingester.stop)
        self.thread.join(30)
        assert not self.thread.is_alive()

    def top(self, token: str = TOKEN_A):
        return self.bus.latest(token)

    def fresh(self, token: str = TOKEN_A) -> bool:
        top = self.top(token)
        return top is not None and top.fresh

    def live(self, token: str = TOKEN_A) -> bool:
        """What a trader's order would see: fresh, and the shard's feed beating."""
        return self.bus.latest_live(token).live

    def beat_at(self, shard: int = 0) -> int | None:
        """Epoch ms of the shard's last heartbeat (to within a millisecond)."""
        age = self.bus.heartbeat_age_ms(shard)
        return None if age is None else now_ms() - age

    def follow(self) -> None:
        """Start reading the bus stream (every publication, in order, as the matcher will)."""
        self.bus.ensure_group(0, "test", start_id="$")
        self._seen: list = []
        self._pos = 0

    def _drain(self, token: str) -> None:
        for message in self.bus.read(0, "test", "t", count=10_000):
            self._seen += [top for top in message.tops if top.token_id == token]
            self.bus.ack(0, "test", [message.id])

    def wait_published(self, predicate, timeout: float = 10.0, what: str = "", token=TOKEN_A):
        """The next top of `token` published after the previous match that satisfies
        `predicate` (nothing read is ever skipped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._drain(token)
            while self._pos < len(self._seen):
                top = self._seen[self._pos]
                self._pos += 1
                if predicate(top):
                    return top
            time.sleep(0.01)
        raise AssertionError(f"timed out waiting for a published top: {what}")


def ingesters(fake, url: str, django_db_blocker):
    """Yields `start(tokens, **config)`, which runs an ingester against `fake` publishing on
    `url`; every one started is stopped afterwards."""
    started: list[RunningIngester] = []

    def start(tokens: list[str], **config: float) -> RunningIngester:
        runner = RunningIngester(fake, url, tokens, **config)
        started.append(runner)
        return runner

    # Health reports write FeedHealth rows from the ingester's threads.
    with django_db_blocker.unblock():
        yield start
        for runner in started:
            runner.stop()


@pytest.fixture
def running(fake, redis_url, django_db_blocker):
    yield from ingesters(fake, redis_url, django_db_blocker)


def test_golden_replay_through_the_real_websocket_rebuilds_the_final_book(fake, running, sequence):
    runner = running([TOKEN_A])
    wait_for(runner.fresh, what="first snapshot")
    fake.replay(sequence)
    final = sequence[-1]
    best_bid, best_ask = final["bids"][-1]["price"], final["asks"][-1]["price"]
    # The burst's first messages already claim the final hash, on a crossed book that is
    # published not fresh until proven; on a loaded machine a top with that claimed hash can
    # also come out fresh before the last messages are in (CI saw one). Wait for the final
    # book itself: its hash, its best prices, fresh.
    wait_for(
        lambda: (
            (top := runner.top()).hash == final["hash"]
            and top.fresh
            and (top.best_bid, top.best_ask) == (best_bid, best_ask)
        ),
        what="the final book on the bus, fresh",
    )
    book = runner.ingester.keeper.book(TOKEN_A)
    wire = book.to_wire()
    assert wire["bids"] == final["bids"] and wire["asks"] == final["asks"]
    assert book.compute_hash() == final["hash"]
    assert runner.ingester.keeper.stats.total_rejected() == 0


def test_dropped_connection_goes_stale_at_once_then_resnapshots_and_is_fresh_again(fake, running):
    runner = running([TOKEN_A], ping=0.5)
    wait_for(runner.fresh, what="first snapshot")
    runner.follow()
    rest_calls_before = sum(1 for method, path in fake.requests if path.startswith("/clob/books"))
    dropped_at_ms = time.time() * 1000
    assert fake.drop_connections() >= 1
    stale = runner.wait_published(lambda top: not top.fresh, timeout=5, what="stale")
    assert stale.published_at - dropped_at_ms < 500  # within one heartbeat interval
    fresh = runner.wait_published(lambda top: top.fresh, timeout=10, what="fresh again")
    assert fresh.published_at >= stale.published_at
    assert runner.ingester.health.reconnects >= 1
    rest_calls = sum(1 for method, path in fake.requests if path.startswith("/clob/books"))
    assert rest_calls > rest_calls_before  # a REST snapshot after the reconnect
    # The resynced book is the server's current one, hash included.
    assert fresh.hash == runner.ingester.keeper.book(TOKEN_A).compute_hash()


def test_silent_connection_is_presumed_dead_and_replaced(fake, running):
    runner = running([TOKEN_A], ping=0.3)
    wait_for(runner.fresh, what="first snapshot")
    runner.follow()
    paused_at_ms = time.time() * 1000
    fake.pause()  # the server stops answering, PONGs included, without closing
    try:
        stale = runner.wait_published(lambda top: not top.fresh, timeout=5, what="stale")
        # Presumed dead after dead_seconds (0.45 s here) without a frame, PONGs included.
        assert stale.published_at - paused_at_ms < 0.45 * 1000 + 500
    finally:
        fake.resume()
    runner.wait_published(lambda top: top.fresh, timeout=10, what="fresh on a new connection")
    assert runner.ingester.health.reconnects >= 1


def test_heartbeat_advances_while_running_and_stops_with_the_ingester(running):
    runner = running([TOKEN_A], heartbeat=0.1)
    wait_for(runner.fresh, what="first snapshot")
    assert runner.live()
    first = runner.beat_at()
    assert first is not None
    wait_for(lambda: (runner.beat_at() or 0) >= first + 200, timeout=5, what="new beats")
    runner.stop()
    last = runner.beat_at()
    assert last is not None
    time.sleep(0.5)  # five intervals
    assert abs((runner.beat_at() or 0) - last) <= 2  # no beat after stop() (ms rounding)
    runner.bus.heartbeat_stale_ms = 300
    assert not runner.live()


def test_a_hung_feed_loop_makes_its_fresh_books_not_live(running):
    # The feed process wedges without closing its sockets: nothing republishes its books
    # stale, the last top keeps saying fresh, and only the missing heartbeat tells.
    runner = running([TOKEN_A], ping=5, heartbeat=0.1)
    runner.bus.heartbeat_stale_ms = 400
    wait_for(runner.fresh, what="first snapshot")
    wait_for(runner.live, what="live")
    runner.loop.call_soon_threadsafe(time.sleep, 1.5)  # wedge the ingester's event loop
    wait_for(lambda: not runner.live(), timeout=1.2, what="not live")
    assert runner.fresh()  # the flag alone would still trade on it
    wait_for(runner.live, timeout=5, what="live again")


def test_an_ingester_streaming_every_token_beats_every_bus_shard():
    bus = RedisBus.from_url("redis://127.0.0.1:1/0", n_shards=3)  # never called
    config = IngestConfig(ws_url="ws://unused")
    every = Ingester(config=config, clob=ClobClient("http://unused"), bus=bus)
    assert every.heartbeat_shards == [0, 1, 2]  # the embedded demo: shards=1
    one = Ingester(config=config, clob=ClobClient("http://unused"), bus=bus, shard=2, shards=3)
    assert one.heartbeat_shards == [2]


def test_bad_frames_are_counted_and_never_applied(fake, running, sequence):
    runner = running([TOKEN_A])
    wait_for(runner.fresh, what="first snapshot")
    before = runner.top().hash
    stats = runner.ingester.keeper.stats
    for text in [
        "{not json",
        '{"event_type": "no_such_event", "asset_id": "x"}',
        json.dumps(
            {"event_type": "price_change", "asset_id": TOKEN_A, "market": CONDITION,
             "changes": [{"price": "0.5", "side": "BUY", "size": "10"}], "timestamp": "1"}
        ),  # the legacy shape
        json.dumps(
            {"event_type": "price_change", "market": CONDITION, "timestamp": "99999999999999",
             "price_changes": [{"asset_id": TOKEN_A, "price": "0.5", "side": "BUY",
                                "size": "-3", "hash": "x"}]}
        ),  # negative size
        json.dumps(
            {"event_type": "price_change", "market": CONDITION, "timestamp": "99999999999999",
             "price_changes": [{"asset_id": TOKEN_A, "price": "0.5", "side": "BUY",
                                "size": "abc"}]}
        ),  # non-numeric size
    ]:  # fmt: skip
        fake.send_raw(text)
    wait_for(lambda: stats.total_rejected() >= 5, what="rejections counted")
    time.sleep(0.2)
    assert runner.top().hash == before and runner.fresh()
    assert {k: stats.rejected.get(k) for k in ("malformed_json", "unknown_event_type",
            "legacy_price_change", "bad_size")} == {
        "malformed_json": 1, "unknown_event_type": 1, "legacy_price_change": 1, "bad_size": 2,
    }  # fmt: skip


def test_hash_mismatch_holds_the_token_and_resyncs_it_from_rest(fake, running):
    runner = running([TOKEN_A])
    wait_for(runner.fresh, what="first snapshot")
    book = runner.ingester.keeper.book(TOKEN_A)
    best_bid = book.best_bid_str()
    resyncs = runner.ingester.health.resyncs
    now_ms = str(int(time.time() * 1000))
    # A delta whose claimed hash cannot match: the ingester must not trust the book.
    fake.send_raw(
        json.dumps(
            {"event_type": "price_change", "market": CONDITION, "timestamp": now_ms,
             "price_changes": [{"asset_id": TOKEN_A, "price": best_bid, "side": "BUY",
                                "size": "1", "hash": "0" * 40, "best_bid": best_bid,
                                "best_ask": book.best_ask_str()}]}
        )
    )  # fmt: skip
    wait_for(lambda: runner.ingester.health.resyncs > resyncs, timeout=10, what="REST resync")
    wait_for(runner.fresh, what="fresh after resync")
    assert runner.top().hash == runner.ingester.keeper.book(TOKEN_A).compute_hash()


def test_backoff_is_capped_exponential_with_full_jitter():
    import random

    rng = random.Random(7)
    delays = [backoff_delay(n, base=0.5, cap=30, rng=rng) for n in range(12) for _ in range(50)]
    assert all(0 <= d <= 30 for d in delays)
    first = [backoff_delay(0, base=0.5, cap=30, rng=rng) for _ in range(200)]
    late = [backoff_delay(10, base=0.5, cap=30, rng=rng) for _ in range(200)]
    assert max(first) <= 0.5 and max(late) > 20  # grows to the cap
    assert len({round(d, 6) for d in late}) > 150  # jittered, not lockstep


@pytest.mark.django_db
def test_wanted_tokens_are_held_ordered_active_and_watched_split_by_shard(settings):
    from decimal import Decimal

    from marketdata import watchlist
    from marketdata.bus import shard_of
    from marketdata.ingest import wanted_tokens
    from marketdata.models import Market, Token
    from tests.factories import AccountFactory
    from trading.models import Order

    def market(cid, volume, **extra):
        m = Market.objects.create(
            condition_id=cid, question=f"Q {cid}?", volume_24hr=Decimal(volume),
            min_order_size=Decimal("5"), tick_size=Decimal("0.01"), **extra,
        )  # fmt: skip
        for index, outcome in enumerate(("Yes", "No")):
            Token.objects.create(
                market=m, token_id=f"{cid}-{outcome}", outcome=outcome, index=index
            )
        return m

    market("hot", "900")
    market("warm", "500")
    market("cold", "1")
    market("shut", "999", closed=True, status=Market.Status.CLOSED)
    market("held", "0")
    market("seen", "0")
    account = AccountFactory()
    Order.objects.create(
        account=account, epoch=0, token_id="held-Yes", market_id="held", side="BUY", type="limit",
        time_in_force="GTC", price=Decimal("0.5"), size=Decimal("10"), status="live",
    )  # fmt: skip
    watchlist.watch(["seen-No"])
    settings.MARKETDATA_TOP_MARKETS = 2
    everything = set(wanted_tokens(shard=0, shards=1))
    assert everything == {"hot-Yes", "hot-No", "warm-Yes", "warm-No", "held-Yes", "seen-No"}
    info = wanted_tokens(shard=0, shards=1)["hot-Yes"]
    assert (info.market, info.min_order_size, info.tick_size) == ("hot", "5", "0.01")
    halves = [set(wanted_tokens(shard=i, shards=2)) for i in range(2)]
    assert halves[0] | halves[1] == everything and not halves[0] & halves[1]
    assert all(shard_of(t, 2) == i for i, half in enumerate(halves) for t in half)


@pytest.mark.django_db(transaction=True)
def test_market_resolved_on_the_websocket_is_applied_once(fake, running):
    from marketdata.models import Market, MarketResolution, Token

    market = Market.objects.create(condition_id=CONDITION, question="Will it?")
    Token.objects.create(market=market, token_id=TOKEN_A, outcome="Yes", index=0)
    Token.objects.create(market=market, token_id="B-token", outcome="No", index=1)
    runner = running([TOKEN_A])
    wait_for(runner.fresh, what="first snapshot")
    event = {"event_type": "market_resolved", "id": "1", "market": CONDITION,
             "assets_ids": [TOKEN_A, "B-token"], "winning_asset_id": TOKEN_A,
             "winning_outcome": "Yes", "timestamp": "1790658900000"}  # fmt: skip
    fake.send_raw(json.dumps(event))
    fake.send_raw(json.dumps(event))  # a duplicate report changes nothing
    wait_for(lambda: MarketResolution.objects.filter(market=market).exists(), what="resolution")
    time.sleep(0.3)
    resolution = MarketResolution.objects.get(market=market)
    assert resolution.state == "resolved" and resolution.source == "ws"
    assert resolution.winning_token.token_id == TOKEN_A
    market.refresh_from_db()
    assert market.status == "resolved"


@pytest.mark.django_db(transaction=True)
def test_new_market_on_the_websocket_is_discovered_without_waiting_for_the_schedule(
    fake, running, fixtures_dir, settings
):
    from devtools.fakepoly import FixtureSet
    from marketdata.models import Market

    # The discovery task runs eagerly here (no broker) with the clients' default URLs.
    settings.POLYMARKET_GAMMA_URL, settings.POLYMARKET_CLOB_URL = fake.gamma_url, fake.clob_url

    # A market the fake Gamma knows but our database does not (yet).
    gamma = FixtureSet.load(fixtures_dir).gamma_markets
    condition_id = next(cid for cid, m in gamma.items() if not m.get("closed"))
    assert not Market.objects.filter(condition_id=condition_id).exists()
    runner = running([TOKEN_A])
    wait_for(runner.fresh, what="first snapshot")
    fake.send_raw(
        json.dumps(
            {"event_type": "new_market", "id": "1", "market": condition_id,
             "question": gamma[condition_id].get("question"), "assets_ids": [],
             "outcomes": ["Yes", "No"], "timestamp": str(now_ms())}
        )
    )  # fmt: skip
    # Wait on the ingester, not by polling the table: the test database is in-memory SQLite
    # with a shared cache, where a read racing the discovery's write fails as "locked".
    wait_for(
        lambda: runner.ingester.health.new_markets == 1 and not runner.ingester._background,
        what="announced market handed to discovery and discovered",
    )
    market = Market.objects.get(condition_id=condition_id)
    assert market.question == gamma[condition_id]["question"]
    assert market.tokens.count() == 2
    assert runner.ingester.health.new_markets == 1
    assert runner.fresh()  # the announcement never disturbed the books


@pytest.mark.django_db
def test_discover_markets_by_condition_id_reports_ids_gamma_does_not_know(fake, fixtures_dir):
    from devtools.fakepoly import FixtureSet
    from marketdata.clients import GammaClient
    from marketdata.models import Market
    from marketdata.services import discover_by_condition_ids

    known = next(iter(FixtureSet.load(fixtures_dir).gamma_markets))
    with GammaClient(fake.gamma_url) as gamma, ClobClient(fake.clob_url) as clob:
        result = discover_by_condition_ids(
            gamma=gamma, clob=clob, condition_ids=[known, "0xnope", known]
        )
    assert result.markets_created == 1 and result.markets_seen == 1
    assert result.errors == ["0xnope: not on Gamma yet"]
    assert list(Market.objects.values_list("condition_id", flat=True)) == [known]


# --- the protocol as it is now (polymarket.md §9, docs/operations.md "Feed") -----------------

BOOKLESS = "9" * 77  # a listed market's token the exchange has no book for


def sent_messages(fake: FakePolymarket) -> list[dict | str]:
    return [json.loads(f) if f.startswith("{") else f for f in fake.client_frames]


def test_subscribes_with_initial_dump_and_level_and_pings_only_after(fake, running):
    runner = running([TOKEN_A], ping=0.2)
    wait_for(runner.fresh, what="first snapshot")
    wait_for(lambda: "PING" in fake.client_frames, what="a PING")
    first, *later = sent_messages(fake)
    assert first == {
        "assets_ids": [TOKEN_A],
        "custom_feature_enabled": True,
        "type": "market",
        "initial_dump": True,
        "level": 2,
    }
    assert "PING" in later and fake.connection_count == 1  # answered: the socket is kept


def test_token_changes_go_on_the_open_socket_without_reconnecting(fake, running):
    runner = running([TOKEN_A], ping=0.2)
    wait_for(runner.fresh, what="first snapshot")
    dk = "98022490269692409998126496127597032490334070080325855126491859374983463996227"
    runner.infos = {**runner.infos, dk: TokenInfo(dk, "0xdk", "5", False, None)}
    runner.loop.call_soon_threadsafe(
        lambda: runner.loop.create_task(runner.ingester.set_tokens(runner.infos))
    )
    wait_for(lambda: runner.fresh(dk), what="the added token's book")
    runner.infos = {dk: runner.infos[dk]}  # TOKEN_A dropped
    runner.loop.call_soon_threadsafe(
        lambda: runner.loop.create_task(runner.ingester.set_tokens(runner.infos))
    )
    wait_for(lambda: not runner.fresh(TOKEN_A), what="the dropped token published stale")
    wait_for(
        lambda: {"operation": "unsubscribe", "assets_ids": [TOKEN_A],
                 "custom_feature_enabled": True} in sent_messages(fake),
        what="an unsubscribe operation",
    )  # fmt: skip
    operations = [m for m in sent_messages(fake) if isinstance(m, dict)]
    assert operations[1] == {
        "assets_ids": [dk],
        "custom_feature_enabled": True,
        "operation": "subscribe",
    }
    assert sum(1 for m in operations if m.get("type") == "market") == 1  # one connection
    assert runner.ingester.health.reconnects == 0 and fake.connection_count == 1
    assert runner.fresh(dk) and runner.live(dk)


def test_a_market_without_a_book_is_refetched_with_a_capped_backoff(fake, running):
    """Every 100 ms without the backoff (40 POST /books in 4 s); with it, 0.1 s doubling to a
    0.8 s cap: about 8. The backoff ends when a book arrives."""
    runner = running([TOKEN_A], ping=0.5)
    runner.ingester.config.resync_min_interval = 0.1
    runner.ingester.config.resync_max_interval = 0.8
    wait_for(runner.fresh, what="the first token set subscribed")
    runner.infos = {**runner.infos, BOOKLESS: TokenInfo(BOOKLESS, CONDITION, "5", False, None)}
    runner.loop.call_soon_threadsafe(
        lambda: runner.loop.create_task(runner.ingester.set_tokens(runner.infos))
    )
    wait_for(lambda: BOOKLESS in runner.ingester.tokens, what="the bookless token tracked")
    start = time.monotonic()
    time.sleep(4)
    asked = [ids for ids in list(fake.books_requested) if BOOKLESS in ids]
    assert 3 <= len(asked) <= 10, len(asked)
    assert time.monotonic() - start < 6
    fake.replay(
        [{"event_type": "book", "market": CONDITION, "asset_id": BOOKLESS, "hash": "",
          "timestamp": str(now_ms()), "bids": [{"price": "0.4", "size": "10"}], "asks": []}]
    )  # fmt: skip
    wait_for(lambda: runner.fresh(BOOKLESS), what="its book, at last")
    before = sum(1 for ids in list(fake.books_requested) if BOOKLESS in ids)
    time.sleep(1.0)
    assert sum(1 for ids in list(fake.books_requested) if BOOKLESS in ids) == before
