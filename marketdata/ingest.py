"""The websocket ingester: Polymarket's market channel → local books → the price bus.

One process runs one shard (`manage.py marketdata stream --shard i/N`); a shard owns the
tokens whose `shard_of(token_id, N) == i` and spreads them over several connections when
there are more than MARKETDATA_WS_MAX_TOKENS. Per connection:

* subscribe with custom features on (best_bid_ask, new_market, market_resolved);
* every token is stale from the moment a connection is (re)made until it has a fresh
  snapshot: the channel's own `book` on subscribe, and a REST `/books` fetch after every
  (re)connect, whichever is newer, so nothing older than what we hold is ever installed;
* text `PING` every MARKETDATA_WS_PING_SECONDS; a connection silent for 1.5 of those is
  presumed dead, its tokens published stale at once, and it is replaced;
* a closed or dead connection marks its tokens stale immediately, then reconnects after a
  capped exponential backoff with full jitter (no two ingesters reconnect in lockstep);
* a book-hash mismatch (found by the BookKeeper) holds that token's deltas and triggers a
  REST resnapshot; the token is published stale until it is in sync again;
* `market_resolved` is applied to the market's lifecycle (once, however many sources);
* `new_market` enqueues the discovery of that market (`discover_new_markets`), off the
  loop, so a new market is listed without waiting for the scheduled discovery.

Publishing is conflated (MARKETDATA_FLUSH_MS, default 20 ms): a frame is published at once
if the last publish is at least that old, otherwise the latest state of every token touched
meanwhile goes out when it is; a busy feed publishes each token at most once per interval,
and no update waits longer than that. Stale marks are published at once. Book hashes are
checked at most once per token per MARKETDATA_HASH_CHECK_MS (default 1 s). On a RedisBus
the publishes are pipelined (marketdata/publisher.py): written at once, their replies read at
the next publish, so the feed does not wait for Redis.

Heartbeat: while `run()` is running, the ingester calls `bus.heartbeat(shard)` every
`heartbeat_seconds` (1 s) from a task on its own event loop, and stops the moment it is
stopped. The heartbeat means "the feed process for this shard is alive and maintains its
tokens' `fresh` flags"; it does NOT mean "the shard has live connections": a lost or silent
connection already publishes its tokens stale (above), so the ingester keeps beating with
zero connections. What only the heartbeat covers is the process itself dying or hanging
without closing its sockets (kill -9, OOM, a wedged event loop, a partitioned host): its last
tops would otherwise stay `fresh: true` forever. Because the beat runs on the same loop that
publishes, a blocked loop stops both, and readers (`PriceBus.latest_live`) treat every
token of the shard as stale once the beat is older than PRICE_BUS_HEARTBEAT_STALE_SECONDS.
The embedded demo runs one ingester for all tokens (`shards=1`): it beats every bus shard.

Which tokens: the union of the sources named in MARKETDATA_TOKEN_SOURCES (dotted paths to
functions returning token ids; the trading app contributes tokens with live orders or open
positions, so marketdata imports nothing of ours), the MARKETDATA_TOP_MARKETS most active
open markets, and tokens a trader opened in the UI recently (marketdata.watchlist).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import signal
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import websockets
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection

from marketdata import resolution, services, watchlist
from marketdata.bus import PriceBus, TradePrint, get_bus, shard_of
from marketdata.clients import ClobClient, PolymarketError
from marketdata.messages import (
    DEFAULT_FLUSH_MS,
    DEFAULT_HASH_CHECK_MS,
    BookKeeper,
    FeedStats,
    parse_events,
)
from marketdata.models import Market, Token
from marketdata.publisher import publisher_for
from marketdata.tasks import discover_new_markets

logger = logging.getLogger("polysim.feed")


@dataclass(frozen=True)
class TokenInfo:
    token_id: str
    market: str  # condition id
    min_order_size: str
    neg_risk: bool
    tick_size: str | None


def _plain(value: Any) -> str | None:
    if value is None:
        return None
    text = format(value.normalize(), "f") if hasattr(value, "normalize") else str(value)
    return text


def token_infos(token_ids: Iterable[str]) -> dict[str, TokenInfo]:
    """Book metadata for tokens we know (min order size and neg risk are part of the book
    hash but not on the websocket)."""
    rows = Token.objects.filter(token_id__in=list(token_ids)).select_related("market")
    infos = {}
    for token in rows:
        market = token.market
        infos[token.token_id] = TokenInfo(
            token_id=token.token_id,
            market=market.condition_id,
            min_order_size=_plain(market.min_order_size) or "5",
            neg_risk=market.neg_risk,
            tick_size=_plain(market.tick_size),
        )
    return infos


def wanted_tokens(*, shard: int, shards: int) -> dict[str, TokenInfo]:
    """The tokens this shard should stream now (see the module docstring)."""
    ids = services.tokens_in_use()
    top = int(getattr(settings, "MARKETDATA_TOP_MARKETS", 50))
    if top:
        active = (
            Market.objects.filter(status=Market.Status.OPEN, enable_order_book=True, closed=False)
            .order_by("-volume_24hr", "-volume", "id")
            .values_list("id", flat=True)[:top]
        )
        ids.update(
            Token.objects.filter(market_id__in=list(active)).values_list("token_id", flat=True)
        )
    ids.update(watchlist.watched())
    mine = {t for t in ids if shard_of(t, shards) == shard}
    return token_infos(mine)


@dataclass
class ShardHealth:
    connections: int = 0
    last_message_at: float | None = None  # epoch seconds
    messages: int = 0
    resyncs: int = 0
    reconnects: int = 0
    new_markets: int = 0  # `new_market` announcements handed to discovery


@dataclass
class IngestConfig:
    ws_url: str
    ping_seconds: float = 10.0
    max_tokens_per_connection: int = 400
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    refresh_seconds: float = 30.0
    resync_min_interval: float = 2.0
    health_seconds: float = 5.0
    heartbeat_seconds: float = 1.0
    # Conflation: tops are published at most once per flush_ms (the latest state of every
    # token touched since the last publish); 0 publishes after every frame.
    flush_ms: int = DEFAULT_FLUSH_MS
    # Book-hash check of a token at most once per hash_check_ms (BookKeeper verify_interval_ms).
    hash_check_ms: int = DEFAULT_HASH_CHECK_MS

    @property
    def dead_after(self) -> float:
        return self.ping_seconds * 1.5


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base·2^attempt)] (AWS architecture blog)."""
    return rng.uniform(0, min(cap, base * (2**attempt)))


@dataclass
class _Connection:
    tokens: list[str]
    task: asyncio.Task[None] | None = None
    ws: Any = None
    last_rest: dict[str, float] = field(default_factory=dict)


class Ingester:
    """Runs the connections of one shard inside one asyncio loop; the BookKeeper is touched
    only from that loop, so it needs no lock."""

    def __init__(
        self,
        *,
        config: IngestConfig,
        clob: ClobClient,
        bus: PriceBus,
        shard: int = 0,
        shards: int = 1,
        token_source: Callable[[], dict[str, TokenInfo]] | None = None,
        stats: FeedStats | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.clob = clob
        self.bus = bus
        self.shard = shard
        self.shards = shards
        self.token_source = token_source or (
            lambda: _db_call(wanted_tokens, shard=shard, shards=shards)
        )
        self.keeper = BookKeeper(
            stats=stats or FeedStats(), verify_interval_ms=config.hash_check_ms
        )
        self._publisher = publisher_for(bus)  # RedisBus: writes without waiting for replies
        self._last_publish = float("-inf")  # monotonic seconds
        self._flush_timer: asyncio.TimerHandle | None = None
        self.health = ShardHealth()
        self.rng = rng or random.Random()
        self.tokens: dict[str, TokenInfo] = {}
        self._connections: list[_Connection] = []
        self._stop = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()  # fire-and-forget work, kept alive

    # --- lifecycle ------------------------------------------------------------------------
    async def run(self) -> None:
        """Until `stop()`: keep the subscriptions in step with the wanted tokens, publish
        health, resync books that need it."""
        tasks = [
            asyncio.create_task(self._refresh_loop(), name="feed-refresh"),
            asyncio.create_task(self._health_loop(), name="feed-health"),
            asyncio.create_task(self._heartbeat_loop(), name="feed-heartbeat"),
        ]
        try:
            await self._stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await self._close_connections(self._connections)
            self._connections = []
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self._flush_timer is not None:  # publish what is still held back
                self._flush_timer.cancel()
                self._flush_due()
            try:
                self._publisher.flush()
            except Exception:
                logger.exception("feed shard %d: the last publish failed", self.shard)
            # A last health record and any announced-market discovery still running, but
            # shutdown must not hang on a busy database or a slow Gamma.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._report_health()
                    if self._background:
                        await asyncio.wait(set(self._background))

    def stop(self) -> None:
        self._stop.set()

    async def _sleep(self, seconds: float) -> None:
        """Sleep until `seconds` pass or stop() is called, whichever is first. Uses
        asyncio.timeout, not asyncio.wait_for: on Python 3.11 wait_for can swallow a
        cancellation that arrives as the inner wait completes, and a task cancelled then
        (shutdown, or a connection replaced when the token set changes) would never end."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    # --- which tokens ---------------------------------------------------------------------
    async def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            try:
                wanted = await sync_to_async(self.token_source, thread_sensitive=False)()
                await self.set_tokens(wanted)
            except Exception:
                logger.exception("feed shard %d: could not refresh its token set", self.shard)
            await self._sleep(self.config.refresh_seconds)

    async def set_tokens(self, wanted: dict[str, TokenInfo]) -> None:
        """Track exactly `wanted`; connections whose token set changes are replaced (a fresh
        socket per changed chunk, the fallback the reference recommends over unsubscribe)."""
        for token_id, info in wanted.items():
            self.keeper.track(
                token_id,
                market=info.market,
                min_order_size=info.min_order_size,
                neg_risk=info.neg_risk,
                tick_size=info.tick_size,
            )
        for token_id in set(self.tokens) - set(wanted):
            self.keeper.untrack(token_id)
        self.tokens = dict(wanted)
        size = max(1, self.config.max_tokens_per_connection)
        ordered = sorted(wanted)
        chunks = [ordered[i : i + size] for i in range(0, len(ordered), size)]
        current = {tuple(c.tokens): c for c in self._connections}
        keep = [current[tuple(chunk)] for chunk in chunks if tuple(chunk) in current]
        dropped = [c for c in self._connections if c not in keep]
        await self._close_connections(dropped)
        started = [_Connection(tokens=chunk) for chunk in chunks if tuple(chunk) not in current]
        for conn in started:
            conn.task = asyncio.create_task(self._connection_loop(conn), name="feed-conn")
        self._connections = keep + started

    async def _close_connections(self, connections: list[_Connection]) -> None:
        for conn in connections:
            if conn.task is not None:
                conn.task.cancel()
        for conn in connections:
            if conn.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await conn.task

    # --- one connection -------------------------------------------------------------------
    async def _connection_loop(self, conn: _Connection) -> None:
        attempt = 0
        while not self._stop.is_set():
            ok = False
            try:
                ok = await self._session(conn)
            except asyncio.CancelledError:
                self._mark_stale(conn.tokens, "unsubscribed")
                raise
            except (OSError, TimeoutError, websockets.WebSocketException, PolymarketError) as exc:
                logger.warning("feed shard %d: connection lost: %s", self.shard, exc)
            except Exception:
                logger.exception("feed shard %d: connection failed", self.shard)
            finally:
                conn.ws = None
            self._mark_stale(conn.tokens, "disconnected")
            self.health.reconnects += 1
            attempt = 0 if ok else attempt + 1
            delay = backoff_delay(
                attempt, base=self.config.backoff_base, cap=self.config.backoff_cap, rng=self.rng
            )
            await self._sleep(delay)

    async def _session(self, conn: _Connection) -> bool:
        """One websocket session; returns True if it got as far as fresh books (so the next
        reconnect starts its backoff from the beginning)."""
        async with websockets.connect(
            self.config.ws_url,
            ping_interval=None,  # the channel wants text PINGs, not protocol pings
            max_size=None,
            open_timeout=10,
            close_timeout=2,
        ) as ws:
            conn.ws = ws
            self.health.connections += 1
            try:
                self._mark_stale(conn.tokens, "resubscribe")
                await ws.send(
                    orjson.dumps(
                        {
                            "type": "market",
                            "assets_ids": conn.tokens,
                            "custom_feature_enabled": True,
                        }
                    ).decode()
                )
                await self._rest_snapshot(conn, conn.tokens)
                last_frame = time.monotonic()
                next_ping = last_frame + self.config.ping_seconds
                while True:
                    now = time.monotonic()
                    if now - last_frame > self.config.dead_after:
                        raise TimeoutError(f"no frame for {now - last_frame:.1f}s")
                    if now >= next_ping:
                        await ws.send("PING")
                        next_ping = now + self.config.ping_seconds
                    wake = min(next_ping, last_frame + self.config.dead_after)
                    # A deferred in-burst mismatch expires even if no frame ever comes.
                    deadline = self.keeper.next_deadline()
                    if deadline is not None:
                        wake = min(wake, deadline)
                    try:
                        async with asyncio.timeout(max(0.01, wake - now)):
                            raw = await ws.recv()
                    except TimeoutError:
                        if deadline is not None and time.monotonic() >= deadline:
                            self._publish()  # expires it: held, published stale
                            await self._resync_if_needed(conn)
                        continue
                    last_frame = time.monotonic()
                    await self._on_frame(raw)
                    await self._resync_if_needed(conn)
            finally:
                self.health.connections -= 1

    async def _on_frame(self, raw: str | bytes) -> None:
        self.health.messages += 1
        self.health.last_message_at = time.time()
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        if "market_resolved" in text or "new_market" in text:
            announced: list[str] = []
            for event in parse_events(text, self.keeper.stats):
                if event["event_type"] == "market_resolved":
                    await sync_to_async(_apply_resolution, thread_sensitive=False)(dict(event))
                elif event["event_type"] == "new_market" and event["market"]:
                    announced.append(event["market"])
            if announced:
                self.health.new_markets += len(announced)
                self._spawn(sync_to_async(_enqueue_discovery, thread_sensitive=False)(announced))
        self.keeper.feed(raw)
        self._publish_conflated()

    def _publish_conflated(self) -> None:
        """Publish now if the last publish is at least flush_ms old, else once it is: a quiet
        feed publishes each frame at once, a busy one the latest state of each token every
        flush_ms (the added latency is at most flush_ms)."""
        wait = self._last_publish + self.config.flush_ms / 1000 - time.monotonic()
        if wait <= 0:
            self._publish()
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(wait, self._flush_due)

    def _flush_due(self) -> None:
        self._flush_timer = None
        self._publish()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _publish(self) -> None:
        self._last_publish = time.monotonic()
        trades = self.keeper.drain_trades_json()
        # Called even with nothing to send: it also collects the previous publish's replies.
        self._publisher.publish_keeper(self.keeper, trades)
        if trades:  # the market-wide prints, also kept for the market page's recent trades
            self.bus.record_trades([TradePrint.from_json(blob) for _, blob in trades])

    def _mark_stale(self, tokens: Iterable[str], reason: str) -> None:
        self.keeper.require_resync(tokens, reason)
        self._publish()

    async def _resync_if_needed(self, conn: _Connection) -> None:
        wanted = self.keeper.resync_wanted() & set(conn.tokens)
        if not wanted:
            return
        now = time.monotonic()
        due = [
            t
            for t in wanted
            if now - conn.last_rest.get(t, -1e9) >= self.config.resync_min_interval
        ]
        if due:
            await self._rest_snapshot(conn, due)

    async def _rest_snapshot(self, conn: _Connection, tokens: list[str]) -> None:
        """REST `/books` for tokens held for resync; a snapshot older than the book the
        channel already gave us is not installed (no update applied out of order)."""
        now = time.monotonic()
        for token_id in tokens:
            conn.last_rest[token_id] = now
        books = await asyncio.to_thread(self.clob.books, tokens)
        for snapshot in books:
            asset = snapshot.get("asset_id")
            if not isinstance(asset, str) or asset not in self.tokens:
                continue
            current = self.keeper.book(asset)
            if (
                current is not None
                and not self.keeper.needs_resync(asset)
                and _ts(current.timestamp) >= _ts(snapshot.get("timestamp"))
            ):
                continue  # the channel's own snapshot is newer: keep it
            had_book = current is not None
            if self.keeper.install_snapshot(snapshot) and had_book:
                # A resync replaces a book we held (reconnect, hash mismatch); a token's very
                # first snapshot is not one.
                self.health.resyncs += 1
        self._publish()

    # --- heartbeat ------------------------------------------------------------------------
    @property
    def heartbeat_shards(self) -> list[int]:
        """The bus shards whose tokens this ingester owns: its own, or all of them when it
        streams every token (shards=1, the embedded demo)."""
        return list(range(self.bus.n_shards)) if self.shards == 1 else [self.shard]

    async def _heartbeat_loop(self) -> None:
        """Beat at once, then every heartbeat_seconds until stopped (see the module
        docstring). Runs on the ingester's loop on purpose: a wedged loop must stop it."""
        while not self._stop.is_set():
            try:
                for shard in self.heartbeat_shards:
                    self.bus.heartbeat(shard)
            except Exception:
                logger.exception("feed shard %d: could not publish its heartbeat", self.shard)
            await self._sleep(self.config.heartbeat_seconds)

    # --- health ---------------------------------------------------------------------------
    async def _health_loop(self) -> None:
        while not self._stop.is_set():
            await self._sleep(self.config.health_seconds)
            await self._report_health()

    async def _report_health(self) -> None:
        stats = self.keeper.stats
        last = self.health.last_message_at
        try:
            await sync_to_async(_health_write, thread_sensitive=False)(
                shard=self.shard,
                connections=self.health.connections,
                subscribed_tokens=len(self.tokens),
                last_message_at=dt.datetime.fromtimestamp(last, dt.UTC) if last else None,
                messages=self.health.messages,
                stale_tokens=len(self.keeper.resync_wanted()),
                resyncs=self.health.resyncs,
                hash_mismatches=int(stats.rejected.get("hash_mismatch", 0)),
                reconnects=self.health.reconnects,
            )
        except Exception:
            logger.exception("feed shard %d: could not record health", self.shard)


def _ts(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _db_call(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ORM work from the ingester's worker threads. These calls are rare (health every
    few seconds, the token set every 30 s, a resolution now and then), so each opens and
    closes its own connection: pool threads must not pin database sessions."""
    close_old_connections()
    try:
        return func(*args, **kwargs)
    finally:
        connection.close()


def _health_write(**kwargs: Any) -> None:
    _db_call(services.feed_health_report, **kwargs)


def _apply_resolution(event: dict[str, Any]) -> None:
    _db_call(_apply_resolution_now, event)


def _enqueue_discovery(condition_ids: list[str]) -> None:
    """Hand announced markets to the worker (with a broker: one Redis push; embedded: the
    discovery runs here, in a pool thread, never on the feed loop)."""
    try:
        _db_call(discover_new_markets.delay, condition_ids)
    except Exception:
        logger.exception("could not discover announced market(s) %s", condition_ids)


def _apply_resolution_now(event: dict[str, Any]) -> None:
    verdict = resolution.verdict_from_ws(event)
    market = Market.objects.filter(condition_id=event.get("market", "")).first()
    if market is None:
        logger.info("market_resolved for unknown market %s", event.get("market"))
        return
    services.market_apply_verdict(market=market, verdict=verdict, source="ws", evidence=event)


def config_from_settings() -> IngestConfig:
    return IngestConfig(
        ws_url=settings.POLYMARKET_WS_URL,
        ping_seconds=float(getattr(settings, "MARKETDATA_WS_PING_SECONDS", 10)),
        max_tokens_per_connection=int(getattr(settings, "MARKETDATA_WS_MAX_TOKENS", 400)),
        flush_ms=int(getattr(settings, "MARKETDATA_FLUSH_MS", DEFAULT_FLUSH_MS)),
        hash_check_ms=int(getattr(settings, "MARKETDATA_HASH_CHECK_MS", DEFAULT_HASH_CHECK_MS)),
    )


def run_stream(*, shard: int = 0, shards: int = 1) -> None:
    """Blocking entry point of `manage.py marketdata stream`: runs until SIGINT/SIGTERM."""

    async def main() -> None:
        ingester = Ingester(
            config=config_from_settings(),
            clob=ClobClient(),
            bus=get_bus(),
            shard=shard,
            shards=shards,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, ingester.stop)
        logger.info("feed shard %d/%d streaming from %s", shard, shards, ingester.config.ws_url)
        await ingester.run()

    asyncio.run(main())
