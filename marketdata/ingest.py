"""The websocket ingester: Polymarket's market channel → local books → the price bus.

One process runs one shard (`manage.py marketdata stream --shard i/N`); a shard owns the
tokens whose `shard_of(token_id, N) == i` and spreads them over several connections of at
most MARKETDATA_WS_MAX_TOKENS each. Per connection (the protocol: docs/operations.md, "Feed"):

* subscribe with `{"type": "market", "assets_ids": [...], "initial_dump": true, "level": 2,
  "custom_feature_enabled": true}` (books on subscribe; best_bid_ask, new_market and
  market_resolved on); later changes to the token set go on the open socket as
  `{"operation": "subscribe" | "unsubscribe", ...}`, never by reconnecting;
* text `PING` every MARKETDATA_WS_PING_SECONDS (2 s), only once the subscription is sent (a
  PING first closes the socket); a socket with no frame at all (not even a PONG) for
  MARKETDATA_WS_DEAD_SECONDS (5 s) is dead: its tokens are published stale at once and it is
  replaced. A silent socket therefore leaves its tops fresh at most ~5 s;
* every token is stale from the moment a connection is (re)made until it has a fresh
  snapshot: the channel's own `book` (initial dump), or a REST `/books` fetch, whichever is
  newer, so nothing older than what we hold is ever installed. REST runs beside the socket
  (the socket is read meanwhile). A token REST has no book for (a listed market without one)
  is asked again after a capped exponential backoff, reset when a book arrives;
* a closed or dead connection marks its tokens stale immediately, then reconnects after a
  capped exponential backoff with full jitter (no two ingesters reconnect in lockstep);
* a book-hash mismatch (found by the BookKeeper) holds that token's deltas and triggers a
  REST resnapshot; the token is published stale until it is in sync again;
* `market_resolved` is applied to the market's lifecycle (once, however many sources);
* `new_market` enqueues the discovery of that market (`discover_new_markets`), off the
  loop, so a new market is listed without waiting for the scheduled discovery.

Publishing is conflated (MARKETDATA_FLUSH_MS, default 5 ms): a frame is published at once
if the last publish is at least that old, otherwise the latest state of every token touched
meanwhile goes out when it is; a busy feed publishes each token at most once per interval,
and no update waits longer than that. Stale marks are published at once. Book hashes are
checked at most once per token per MARKETDATA_HASH_CHECK_MS (default 1 s). A publish is one
redis-py pipeline (`RedisBus.publish_json`).

Redis outages: no feed task ever ends on a Redis error. A failed publish or heartbeat marks
the bus down (logged, and in the feed health); the socket is still read and the local books
kept current, and every heartbeat interval the feed tries again with a capped backoff. Once
Redis answers, every book is republished in full (fresh or not as the keeper knows it), then
the heartbeat resumes. The heartbeat also notices a Redis that lost or replaced our writes
without an error reaching us (restarted empty or from an older dump between two publishes):
its beat is written only over the value we wrote last, and when that is not there every book
is republished first.

Heartbeat: every 500 ms the ingester calls `bus.heartbeat(shard)`, but only while it is
healthy: Redis took its last publish, and every connection task is running (a task that ended
is replaced, and logged). The heartbeat means "this shard's process is alive and its tops'
`fresh` flags are current"; a lost or silent connection publishes its tokens stale by itself.
What only the heartbeat covers is the process dying or hanging without closing its sockets
(kill -9, OOM, a wedged event loop, a partitioned host): readers (`RedisBus.latest_live`)
treat every token of the shard as stale once the beat is older than
PRICE_BUS_HEARTBEAT_STALE_SECONDS (2 s). The beat runs on the loop that publishes, so a
blocked loop stops both. The embedded demo runs one ingester for all tokens (`shards=1`): it
beats every bus shard.

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
from marketdata.bus import RedisBus, TradePrint, bus_from_settings, shard_of
from marketdata.clients import ClobClient
from marketdata.messages import (
    DEFAULT_FLUSH_MS,
    DEFAULT_HASH_CHECK_MS,
    BookKeeper,
    FeedStats,
    parse_events,
)
from marketdata.models import Market, Token
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
    bus_error: str = ""  # why Redis is not taking our writes now ("" = it is)
    bus_failures: int = 0  # failed publishes/heartbeats since the process started
    tasks_replaced: int = 0  # connection tasks found ended and started again


@dataclass
class IngestConfig:
    ws_url: str
    ping_seconds: float = 2.0
    dead_seconds: float = 5.0  # no frame (not even a PONG) for this long: the socket is dead
    max_tokens_per_connection: int = 400
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    refresh_seconds: float = 30.0
    # REST resnapshots of one token: at most once per resync_min_interval; a token REST has
    # no book for waits twice as long each time, up to resync_max_interval.
    resync_min_interval: float = 2.0
    resync_max_interval: float = 60.0
    health_seconds: float = 5.0
    heartbeat_seconds: float = 0.5
    # Redis retries while it is down: capped exponential backoff from the heartbeat loop.
    bus_retry_base: float = 0.25
    bus_retry_cap: float = 2.0
    # Conflation: tops are published at most once per flush_ms (the latest state of every
    # token touched since the last publish); 0 publishes after every frame.
    flush_ms: int = DEFAULT_FLUSH_MS
    # Book-hash check of a token at most once per hash_check_ms (BookKeeper verify_interval_ms).
    hash_check_ms: int = DEFAULT_HASH_CHECK_MS


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base·2^attempt)] (AWS architecture blog)."""
    return rng.uniform(0, min(cap, base * (2**attempt)))


def _subscription(tokens: list[str], operation: str | None = None) -> str:
    """The market channel's subscribe message, or an (un)subscribe operation on an open
    socket (docs/operations.md, "Feed")."""
    message: dict[str, Any] = {"assets_ids": tokens, "custom_feature_enabled": True}
    if operation is None:
        message |= {"type": "market", "initial_dump": True, "level": 2}
    else:
        message["operation"] = operation
    return orjson.dumps(message).decode()


@dataclass(eq=False)
class _Connection:
    tokens: list[str]
    task: asyncio.Task[None] | None = None
    ws: Any = None  # set once the subscription is sent on the open socket
    rest_task: asyncio.Task[None] | None = None
    rest_next: dict[str, float] = field(default_factory=dict)  # token -> earliest next REST
    rest_misses: dict[str, int] = field(default_factory=dict)  # REST asks without a book


class Ingester:
    """Runs the connections of one shard inside one asyncio loop; the BookKeeper is touched
    only from that loop, so it needs no lock."""

    def __init__(
        self,
        *,
        config: IngestConfig,
        clob: ClobClient,
        bus: RedisBus,
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
        self._last_publish = float("-inf")  # monotonic seconds
        self._flush_timer: asyncio.TimerHandle | None = None
        self.health = ShardHealth()
        self.rng = rng or random.Random()
        self.tokens: dict[str, TokenInfo] = {}
        self._connections: list[_Connection] = []
        self._stop = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()  # fire-and-forget work, kept alive
        self._bus_attempts = 0  # consecutive failed attempts while Redis is down
        self._bus_retry_at = 0.0  # monotonic time of the next attempt while it is down
        self._beats: dict[int, int] = {}  # bus shard -> the heartbeat value we wrote last

    # --- lifecycle ------------------------------------------------------------------------
    async def run(self) -> None:
        """Until `stop()`: keep the subscriptions in step with the wanted tokens, publish
        health, resync books that need it, beat while healthy."""
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
            self._publish()
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
        would never end."""
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
        """Track exactly `wanted`. Dropped tokens are published stale, then unsubscribed on
        their open socket; new ones go to a connection with room (a subscribe operation on
        its open socket) or to new connections. A connection left without tokens closes."""
        for token_id, info in wanted.items():
            self.keeper.track(
                token_id,
                market=info.market,
                min_order_size=info.min_order_size,
                neg_risk=info.neg_risk,
                tick_size=info.tick_size,
            )
        gone = set(self.tokens) - set(wanted)
        if gone:  # their last tops must not stay fresh on the bus once nobody maintains them
            self._mark_stale(gone, "unsubscribed")
            for token_id in gone:
                self.keeper.untrack(token_id)
        added = sorted(set(wanted) - set(self.tokens))
        self.tokens = dict(wanted)
        size = max(1, self.config.max_tokens_per_connection)
        emptied = []
        for conn in self._connections:
            dropped = [t for t in conn.tokens if t in gone]
            if dropped:
                conn.tokens = [t for t in conn.tokens if t not in gone]
                for token_id in dropped:
                    conn.rest_next.pop(token_id, None)
                    conn.rest_misses.pop(token_id, None)
                if not conn.tokens:
                    emptied.append(conn)
                else:
                    await self._send_operation(conn, dropped, "unsubscribe")
        self._connections = [c for c in self._connections if c not in emptied]
        await self._close_connections(emptied)
        for conn in self._connections:
            room = size - len(conn.tokens)
            if room > 0 and added:
                joining, added = added[:room], added[room:]
                conn.tokens.extend(joining)
                await self._send_operation(conn, joining, "subscribe")
        for i in range(0, len(added), size):
            conn = _Connection(tokens=added[i : i + size])
            self._start(conn)
            self._connections.append(conn)

    async def _send_operation(self, conn: _Connection, tokens: list[str], operation: str) -> None:
        """Change an open socket's subscription. A connection that is not subscribed right now
        sends its whole token list when it is; a send that fails ends the session, and the
        next one subscribes with the whole list too."""
        ws = conn.ws
        if ws is None:
            return
        if operation == "subscribe":
            self._mark_stale(tokens, "subscribed")  # new tokens wait for their first book
        try:
            await ws.send(_subscription(tokens, operation))
        except Exception as exc:
            logger.warning(
                "feed shard %d: could not %s on its socket: %s", self.shard, operation, exc
            )
            return
        if operation == "subscribe":
            self._resync_if_needed(conn)

    def _start(self, conn: _Connection) -> None:
        conn.task = asyncio.create_task(self._connection_loop(conn), name="feed-conn")

    async def _close_connections(self, connections: list[_Connection]) -> None:
        for conn in connections:
            if conn.task is not None:
                conn.task.cancel()
        for conn in connections:
            if conn.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await conn.task

    def _supervise(self) -> bool:
        """Replace any connection task that ended (it never should: a bug or a cancellation
        from outside); True when every connection task is running."""
        healthy = True
        for conn in self._connections:
            task = conn.task
            if task is None or not task.done() or self._stop.is_set():
                continue
            healthy = False
            error = None if task.cancelled() else task.exception()
            logger.error(
                "feed shard %d: a connection task ended (%r); starting it again",
                self.shard,
                error,
            )
            self.health.tasks_replaced += 1
            self._mark_stale(conn.tokens, "connection task ended")
            self._start(conn)
        return healthy

    # --- one connection -------------------------------------------------------------------
    async def _connection_loop(self, conn: _Connection) -> None:
        """Sessions, one after the other, until cancelled: nothing else ends this loop."""
        attempt = 0
        while not self._stop.is_set():
            ok = False
            try:
                ok = await self._session(conn)
            except asyncio.CancelledError:
                self._mark_stale(conn.tokens, "unsubscribed")
                raise
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                logger.warning("feed shard %d: connection lost: %s", self.shard, exc)
            except Exception:
                logger.exception("feed shard %d: connection failed", self.shard)
            finally:
                conn.ws = None
                if conn.rest_task is not None:
                    conn.rest_task.cancel()
                    conn.rest_task = None
            self._mark_stale(conn.tokens, "disconnected")
            self.health.reconnects += 1
            attempt = 0 if ok else attempt + 1
            delay = backoff_delay(
                attempt, base=self.config.backoff_base, cap=self.config.backoff_cap, rng=self.rng
            )
            await self._sleep(delay)

    async def _session(self, conn: _Connection) -> bool:
        """One websocket session; returns True if it got as far as a frame (so the next
        reconnect starts its backoff from the beginning)."""
        got_frame = False
        async with websockets.connect(
            self.config.ws_url,
            ping_interval=None,  # the channel wants text PINGs, not protocol pings
            max_size=None,
            open_timeout=10,
            close_timeout=2,
        ) as ws:
            self.health.connections += 1
            try:
                sent = list(conn.tokens)
                self._mark_stale(sent, "resubscribe")
                await ws.send(_subscription(sent))
                conn.ws = ws
                # Changes made while the subscription was being sent go out as operations.
                later = [t for t in conn.tokens if t not in set(sent)]
                if later:
                    await self._send_operation(conn, later, "subscribe")
                dropped = [t for t in sent if t not in set(conn.tokens)]
                if dropped:
                    await self._send_operation(conn, dropped, "unsubscribe")
                self._resync_if_needed(conn)
                dead_after = self.config.dead_seconds
                last_frame = time.monotonic()
                next_ping = last_frame + self.config.ping_seconds
                while True:
                    now = time.monotonic()
                    if now - last_frame > dead_after:
                        raise TimeoutError(f"no frame for {now - last_frame:.1f}s")
                    if now >= next_ping:
                        await ws.send("PING")
                        next_ping = now + self.config.ping_seconds
                    wake = min(next_ping, last_frame + dead_after)
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
                            self._resync_if_needed(conn)
                        continue
                    last_frame = time.monotonic()
                    got_frame = True
                    await self._on_frame(raw)
                    self._resync_if_needed(conn)
            finally:
                self.health.connections -= 1
        return got_frame

    async def _on_frame(self, raw: str | bytes) -> None:
        self.health.messages += 1
        self.health.last_message_at = time.time()
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        if "market_resolved" in text or "new_market" in text:
            announced: list[str] = []
            for event in parse_events(text, FeedStats()):  # counted once, by keeper.feed
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

    # --- the bus --------------------------------------------------------------------------
    @property
    def bus_ok(self) -> bool:
        return not self.health.bus_error

    def _publish(self) -> None:
        """Publish the due tops and trade prints in one pipeline. Never raises: a failure marks
        the bus down, and the heartbeat loop republishes every book once Redis is back."""
        self._last_publish = time.monotonic()
        if not self.bus_ok:
            self.keeper.verify_pending()  # hash checks and burst expiry go on meanwhile
            lost = self.keeper.drain_trades_json()
            if lost:
                logger.info(
                    "feed shard %d: %d trade prints not published (Redis down)",
                    self.shard,
                    len(lost),
                )
            return
        try:
            self._publish_now()
        except Exception as exc:
            self._bus_lost(exc)

    def _publish_now(self) -> int:
        """Drain and publish (raises what Redis raises); returns the number of tops."""
        tops = self.keeper.drain_tops_json()
        trades = self.keeper.drain_trades_json()
        if tops or trades:
            self.bus.publish_json(tops, trades)
        if trades:  # the market-wide prints, also kept for the market page's recent trades
            self.bus.record_trades([TradePrint.from_json(blob) for _, blob in trades])
        return len(tops)

    def _bus_lost(self, exc: BaseException) -> None:
        """Redis did not take a write: stop beating, retry later, republish all then."""
        first = self.bus_ok
        self.health.bus_failures += 1
        self.health.bus_error = f"{type(exc).__name__}: {exc}"[:300]
        self._bus_retry_at = time.monotonic() + min(
            self.config.bus_retry_cap, self.config.bus_retry_base * 2**self._bus_attempts
        )
        self._bus_attempts += 1
        self._beats.clear()
        self.keeper.touch_all()  # whatever Redis holds now, every book goes out again
        if first:
            logger.error(
                "feed shard %d: Redis unavailable (%s); retrying, heartbeat stopped",
                self.shard,
                self.health.bus_error,
            )

    def _recover_bus(self) -> None:
        """While the bus is down: at most once per backoff step, republish every book; on
        success the bus is up again (the caller beats next)."""
        if time.monotonic() < self._bus_retry_at:
            return
        try:
            self.keeper.touch_all()
            published = self._publish_now()
        except Exception as exc:
            self._bus_lost(exc)
            return
        logger.warning(
            "feed shard %d: Redis is back after %d failed attempt(s); republished %d books",
            self.shard,
            self._bus_attempts,
            published,
        )
        self.health.bus_error = ""
        self._bus_attempts = 0

    # --- REST resnapshots -----------------------------------------------------------------
    def _resync_if_needed(self, conn: _Connection) -> None:
        """Start a REST `/books` fetch (beside the socket) for this connection's tokens held
        for a snapshot and not in their backoff; one fetch per connection at a time."""
        if conn.rest_task is not None and not conn.rest_task.done():
            return
        wanted = self.keeper.resync_wanted() & set(conn.tokens)
        for token_id in set(conn.rest_misses) - wanted:  # a book arrived: backoff over
            del conn.rest_misses[token_id]
            conn.rest_next.pop(token_id, None)
        if not wanted:
            return
        now = time.monotonic()
        due = sorted(t for t in wanted if now >= conn.rest_next.get(t, 0.0))
        if due:
            for token_id in due:  # until the fetch ends, no second one for these
                conn.rest_next[token_id] = float("inf")
            conn.rest_task = asyncio.get_running_loop().create_task(
                self._rest_snapshot(conn, due), name="feed-rest"
            )

    async def _rest_snapshot(self, conn: _Connection, tokens: list[str]) -> None:
        """REST `/books` for tokens held for resync; a snapshot older than the book the
        channel already gave us is not installed (no update applied out of order). A token
        still without a book afterwards waits resync_min_interval · 2^misses (capped)."""
        books: list[dict[str, Any]] = []
        try:
            books = await asyncio.to_thread(self.clob.books, tokens)
        except Exception as exc:
            logger.warning("feed shard %d: REST /books failed: %s", self.shard, exc)
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
        now, cfg = time.monotonic(), self.config
        for token_id in tokens:
            if not self.keeper.needs_resync(token_id) or token_id not in self.tokens:
                conn.rest_misses.pop(token_id, None)
                conn.rest_next.pop(token_id, None)
                continue
            misses = conn.rest_misses.get(token_id, 0)
            conn.rest_misses[token_id] = misses + 1
            wait = min(cfg.resync_max_interval, cfg.resync_min_interval * 2**misses)
            conn.rest_next[token_id] = now + wait
        self._publish()

    def _mark_stale(self, tokens: Iterable[str], reason: str) -> None:
        self.keeper.require_resync(tokens, reason)
        self._publish()

    # --- heartbeat ------------------------------------------------------------------------
    @property
    def heartbeat_shards(self) -> list[int]:
        """The bus shards whose tokens this ingester owns: its own, or all of them when it
        streams every token (shards=1, the embedded demo)."""
        return list(range(self.bus.n_shards)) if self.shards == 1 else [self.shard]

    async def _heartbeat_loop(self) -> None:
        """Every heartbeat_seconds until stopped: replace ended connection tasks, bring the
        bus back if it is down, and beat only if all of that is well (module docstring).
        Runs on the ingester's loop on purpose: a wedged loop must stop it."""
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # a bug here must not end the beat's supervision for good
                logger.exception("feed shard %d: heartbeat step failed", self.shard)
            await self._sleep(self.config.heartbeat_seconds)

    def _tick(self) -> None:
        tasks_ok = self._supervise()
        if not self.bus_ok:
            self._recover_bus()
        if not self.bus_ok or not tasks_ok:
            return
        try:
            for shard in self.heartbeat_shards:
                beat = self.bus.heartbeat(shard, expect=self._beats.get(shard))
                if beat is None:  # not the beat we wrote last: Redis lost or replaced data
                    logger.warning(
                        "feed shard %d: Redis lost our writes (restarted?); "
                        "republishing every book",
                        self.shard,
                    )
                    self.keeper.touch_all()
                    self._publish_now()
                    beat = self.bus.heartbeat(shard)
                if beat is not None:
                    self._beats[shard] = beat
        except Exception as exc:
            self._bus_lost(exc)

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
                bus_error=self.health.bus_error,
                bus_failures=self.health.bus_failures,
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
        ping_seconds=float(getattr(settings, "MARKETDATA_WS_PING_SECONDS", 2)),
        dead_seconds=float(getattr(settings, "MARKETDATA_WS_DEAD_SECONDS", 5)),
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
            # Short socket timeouts: the bus is called from the feed's event loop, and a Redis
            # that stops answering must cost a failed publish, not a frozen loop.
            bus=bus_from_settings({"socket_timeout": 2.0, "socket_connect_timeout": 1.0}),
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
