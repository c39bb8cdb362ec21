"""The maker matcher: fills resting orders when the live market reaches them
(docs/engine-rules.md §4; docs/fill-model.md "Maker fills"; docs/operations.md "Matcher").

One matcher process (`manage.py trading match --shard i/N`) owns the price-bus shards it is
given. It keeps an in-memory index of the resting orders of those shards' tokens — per token
and side, prices in a sorted list and each price's orders in time order — so the work per
book update is a dict lookup and a bisect, plus the orders that actually cross.

Correctness rests on the DB, not on the index: every fill re-reads and locks the order row
(trading.services.matching). The index only has to be current enough to be fast:
* loaded from the DB at start (after noting the order-event streams' last ids, so nothing
  committed meanwhile is missed);
* order events (trading.orderevents) published after every commit that makes an order rest
  or stop resting, drained before each batch of bus entries is processed;
* a periodic reconcile (MATCHER_RECONCILE_SECONDS) re-reading every order changed since the
  last one (by `updated_at`, with a margin for long transactions), which also catches fills
  or cancels made by any other process and events that were lost.

Bus entries are read through a consumer group, a batch at a time, and acknowledged only after
every fill they caused has committed. Within a batch the work is split into one lane per token
that has resting orders, each lane the token's prints and tops in stream order (prints first
within an entry: they happened before its tops were built); tops of tokens with no resting
order are not even decoded. Lanes run on a small pool of worker threads (MATCHER_WORKERS, each
with its own DB connection): fills of one token stay sequential — price-time priority and the
depletion of its levels — while fills of different tokens overlap their round trips and
commits. Two lanes never fill for the same account at once (a striped per-account lock), so
workers never queue on each other's account row locks. After a restart the matcher re-reads
its own pending entries and claims entries left pending by a dead consumer
(MATCHER_CLAIM_IDLE_SECONDS). Replays are harmless: each fill's trigger key is (bus entry,
item, order) and is unique in the DB.

Outages (docs/operations.md "When PostgreSQL or Redis is down"): the loop never dies of one.
An error that says Redis or PostgreSQL is unreachable (core.errors.service_down) or that the
consumer group is gone (NOGROUP: Redis came back without its data) puts the matcher in
`waiting for <service>`: it retries with capped, jittered backoff, and its first success
re-synchronises (`resync`): consumer groups re-created, order-event positions noted, the
index re-loaded from PostgreSQL, and every resting order checked against its token's latest
live top, so an order that a book crossed while the matcher could not see it fills at once
instead of waiting for the book to move. `health` (also in the stats file) and one log line
per change of state say what it is doing.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
import redis
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, close_old_connections, connections
from django.utils import timezone

from core.errors import service_down
from core.money import ZERO
from core.workers import WorkerPool
from marketdata.bus import (
    BookTop,
    BusMessage,
    PriceBus,
    TradePrint,
    latest_many_live,
    top_token_id,
)
from trading.models import Order, Side
from trading.orderevents import OrderEvent, OrderEventLog, epoch_ms, order_event
from trading.resting import Resting, RestingIndex, resting_from_event
from trading.services.matching import (
    MakerResult,
    order_fill_maker_cross,
    order_fill_maker_trade,
)

logger = logging.getLogger("polysim.trading.matcher")

GROUP = "matcher"
RECONCILE_MARGIN = dt.timedelta(seconds=60)  # longer than any order transaction
MAX_LATENCY_SAMPLES = 200_000
ACCOUNT_STRIPES = 256
MAX_IN_FLIGHT = 2_000  # queued work items before the reader waits for the workers
# Retries while a service is down: 0.1 s doubling to 1 s (jittered), so the matcher is back
# well within 10 s of the service's return without hammering it meanwhile.
BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_CAP_SECONDS = 1.0
STILL_WAITING_LOG_SECONDS = 10.0  # how often "still waiting" is logged during an outage


def _top_fields(item: BookTop | bytes) -> dict[str, Any]:
    if isinstance(item, BookTop):
        return {"fresh": item.fresh, "best_bid": item.best_bid, "best_ask": item.best_ask}
    return dict(orjson.loads(item))


def _decimal(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


# --- trigger keys -----------------------------------------------------------------------------
def entry_key(shard: int, entry_id: str) -> str:
    """A bus entry as a fixed-width string that sorts like the stream (Redis ids are
    "<ms>-<seq>", time-based). The 13 leading zeros keep the width of the keys fills already
    store (a scope an in-process bus once needed), so old and new keys compare."""
    ms, _, seq = entry_id.partition("-")
    return f"{0:013d}{shard:03d}{int(ms):015d}{int(seq or 0):08d}"


# --- stats ------------------------------------------------------------------------------------
@dataclass
class MatcherStats:
    entries: int = 0
    tops: int = 0
    trades: int = 0
    stale_skipped: int = 0
    crossing_orders: int = 0
    fills: int = 0
    filled_size: Decimal = ZERO
    duplicates: int = 0
    queue_advances: int = 0
    order_events: int = 0
    reconciles: int = 0
    loaded: int = 0
    load_seconds: float = 0.0
    # Health: "starting", "running", "waiting for redis", "waiting for postgresql",
    # "waiting for redis (consumer group lost)"; since when (epoch s); recoveries so far.
    state: str = "starting"
    state_since: float = field(default_factory=time.time)
    last_error: str = ""
    resyncs: int = 0
    swept_crossing: int = 0
    # publish → commit latency of each fill (ms): the top's / print's `published_at` (the
    # publisher's clock) to the moment the fill's transaction returned.
    latencies_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "latencies_ms"}
        d["filled_size"] = str(self.filled_size)
        d["latencies_ms"] = list(self.latencies_ms)
        return d


@dataclass(slots=True)
class _Batch:
    """One read of a shard: acknowledged when its `left` work items are all done."""

    shard: int
    ids: list[str]
    left: int = 0
    failed: bool = False


# --- outages ---------------------------------------------------------------------------------
def outage_of(exc: BaseException) -> str | None:
    """What an exception says about the services: "redis" or "postgresql" when one is
    unreachable, "redis-data" when the consumer group is gone (Redis restarted without its
    data), None for anything else (a bug, to log with its traceback)."""
    if isinstance(exc, redis.ResponseError) and str(exc).startswith("NOGROUP"):
        return "redis-data"
    return service_down(exc)


_OUTAGE_STATES = {
    "redis": "waiting for redis",
    "postgresql": "waiting for postgresql",
    "redis-data": "waiting for redis (consumer group lost)",
}


class _Backoff:
    """Capped exponential delays with jitter (half fixed, half random)."""

    def __init__(self, first: float = BACKOFF_FIRST_SECONDS, cap: float = BACKOFF_CAP_SECONDS):
        self.first, self.cap, self.attempts = first, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2**self.attempts)
        self.attempts += 1
        return delay * (0.5 + random.random() / 2)

    def reset(self) -> None:
        self.attempts = 0


# --- the matcher ------------------------------------------------------------------------------
class Matcher:
    def __init__(
        self,
        *,
        bus: PriceBus,
        events: OrderEventLog,
        shards: Iterable[int],
        consumer: str | None = None,
        group: str = GROUP,
        reconcile_seconds: float | None = None,
        claim_idle_ms: int | None = None,
        batch: int = 200,
        workers: int | None = None,
    ) -> None:
        self.bus = bus
        self.events = events
        self.shards = sorted(set(shards))
        self.group = group
        self.consumer = consumer or f"matcher-{'-'.join(map(str, self.shards))}"
        self.reconcile_seconds = (
            float(settings.MATCHER_RECONCILE_SECONDS)
            if reconcile_seconds is None
            else reconcile_seconds
        )
        self.claim_idle_ms = (
            int(float(settings.MATCHER_CLAIM_IDLE_SECONDS) * 1000)
            if claim_idle_ms is None
            else claim_idle_ms
        )
        self.batch = batch
        self.workers = max(1, int(settings.MATCHER_WORKERS if workers is None else workers))
        self._pool: WorkerPool | None = None
        self._mutex = threading.Lock()  # the index and the stats, while lanes run
        self._account_locks = [threading.Lock() for _ in range(ACCOUNT_STRIPES)]
        self._progress = threading.Condition(self._mutex)  # notified as work items finish
        self._queues: dict[str, deque[tuple[Callable[[], object], _Batch | None]]] = {}
        self._batches: list[_Batch] = []  # read, not yet acknowledged, oldest first
        self._in_flight = 0
        self.index = RestingIndex()
        self.stats = MatcherStats()
        self._event_ids: dict[int, str] = {}
        # token -> (its last top, still encoded until someone needs it; trigger base)
        self._last_top: dict[str, tuple[BookTop | bytes, str]] = {}
        self._reconciled_at = 0.0
        self._watermark: dt.datetime | None = None
        self._started = False
        self._sweep_when_live = False  # a recovery found no live feed: sweep once it beats
        # Set (to the outage's kind) by any thread that saw a service fail; the loop then
        # waits for the service and re-synchronises before it reads again.
        self._outage: str | None = None
        self._outage_started = self._last_waiting_log = 0.0

    # --- ownership
    def owns(self, token_id: str) -> bool:
        return self.bus.shard_of(token_id) in self.shards

    # --- start: groups, index, pending entries
    def start(self) -> None:
        self.resync()
        self._started = True
        for shard in self.shards:  # our own unacknowledged entries, from before a restart
            while True:
                pending = self.bus.read_pending(
                    shard, self.group, self.consumer, self.batch, raw=True
                )
                if not pending:
                    break
                self._process(shard, pending)
                if len(pending) < self.batch:
                    break
        self.claim()

    def resync(self) -> int:
        """Consumer groups, order-event positions and the index, from scratch; then every
        resting order against its token's latest live top. At start and after every outage.
        Returns how many tokens' tops crossed an order (their fills are dispatched)."""
        for shard in self.shards:
            # "$": a new group starts at the stream's end — old books never fill new orders.
            # After Redis lost its data this re-creates it; a top published before that is
            # still seen below, as its token's latest top.
            self.bus.ensure_group(shard, self.group, start_id="$")
            self._event_ids[shard] = self.events.last_id(shard)  # before the load: no gap
        self.load()
        swept = self._sweep_latest()
        with self._mutex:
            self.stats.resyncs += 1
            self.stats.swept_crossing += swept
        logger.info(
            "matcher %s: %d resting orders indexed from PostgreSQL in %.2f s; "
            "%d tokens' latest tops cross orders",
            self.consumer,
            self.stats.loaded,
            self.stats.load_seconds,
            swept,
        )
        return swept

    def _feeds_beating(self) -> bool:
        """Every shard of ours has a feed heartbeat young enough for its tops to be live."""
        for shard in self.shards:
            age = self.bus.heartbeat_age_ms(shard)
            if age is None or age > self.bus.heartbeat_stale_ms:
                return False
        return True

    def _sweep_latest(self) -> int:
        """Dispatch a fill for each resting order its token's latest LIVE top crosses (and
        is not older than). The trigger key is that top's own (its publish time, suffix
        `s`): a second sweep of the same top replays nothing, and depletion keeps a stream
        entry carrying the same top from taking the same shown shares twice."""
        with self._mutex:
            tokens = sorted(self.index.token_ids())
        if not tokens:
            return 0
        crossing = 0
        for token, top in latest_many_live(self.bus, tokens).items():
            if not top.fresh or not self._candidates(top):
                continue
            shard = self.bus.shard_of(token)
            base = f"{entry_key(shard, f'{top.published_at}-0')}00000s"
            self._dispatch(token, functools.partial(self._on_top, top, base), None)
            crossing += 1
        return crossing

    def load(self) -> None:
        """Every resting limit order of our shards' tokens, from the DB (the source of truth)."""
        t0 = time.perf_counter()
        self._watermark = timezone.now()
        index = RestingIndex()
        rows = (
            Order.objects.filter(status=Order.Status.LIVE, size__isnull=False)
            .values_list(
                "pk",
                "account_id",
                "token_id",
                "side",
                "price",
                "size",
                "filled_size",
                "created_at",
                "queue_ahead",
            )
            .iterator(chunk_size=5000)
        )
        owned: dict[str, bool] = {}
        for pk, acc, token, side, price, size, filled, created, queue in rows:
            mine = owned.get(token)
            if mine is None:
                mine = owned[token] = self.owns(token)
            if mine and size > filled:
                index.upsert(
                    Resting(
                        str(pk),
                        str(acc),
                        token,
                        side,
                        price,
                        size - filled,
                        epoch_ms(created),
                        queue,
                    )
                )
        self.index = index
        self._reconciled_at = time.monotonic()
        self.stats.loaded = len(index)
        self.stats.load_seconds = time.perf_counter() - t0

    def reconcile(self) -> int:
        """Re-read every order changed since the last reconcile (less a margin)."""
        assert self._watermark is not None
        since = self._watermark - RECONCILE_MARGIN
        # Advanced only once the read succeeded: a reconcile cut short by an outage must
        # not skip the orders changed meanwhile.
        next_watermark = timezone.now()
        n = 0
        for order in Order.objects.filter(updated_at__gte=since, size__isnull=False).only(
            "pk",
            "account_id",
            "token_id",
            "side",
            "price",
            "size",
            "filled_size",
            "status",
            "created_at",
            "queue_ahead",
        ):
            if self.owns(order.token_id):
                self._apply_event(order_event(order), check_last_top=False)
                n += 1
        self._watermark = next_watermark
        self._reconciled_at = time.monotonic()
        self.stats.reconciles += 1
        return n

    def claim(self) -> None:
        for shard in self.shards:
            claimed = self.bus.claim_stale(
                shard, self.group, self.consumer, self.claim_idle_ms, self.batch, raw=True
            )
            if claimed:
                self._process(shard, claimed)

    # --- the loop
    def run(self, stop: threading.Event, *, block_ms: int = 200) -> None:
        """Until `stop` is set: read, match, ack; reconcile and claim now and then. Starts
        (and re-synchronises after an outage) inside the loop, so a service that is down at
        start or goes away later only makes it wait (module docstring, "Outages")."""
        backoff = _Backoff()
        try:
            while not stop.is_set():
                try:
                    if not self._started or self._outage is not None:
                        self._recover()
                    self._running()
                    backoff.reset()
                    self._step(block_ms=block_ms, flush=False)
                    if self._sweep_when_live and self._feeds_beating():
                        self._sweep_when_live = False
                        self._sweep_latest()
                    if time.monotonic() - self._reconciled_at >= self.reconcile_seconds:
                        close_old_connections()
                        self.reconcile()
                        self.claim()
                except Exception as exc:
                    self._failed(exc)
                    stop.wait(backoff.next())
        finally:
            self.close()

    def wait_started(self, stop: threading.Event) -> bool:
        """`start`, retried with backoff while a service is down (each attempt's failure
        logged as in `run`); False if `stop` was set first."""
        backoff = _Backoff()
        while not stop.is_set():
            try:
                self._recover()
            except Exception as exc:
                self._failed(exc)
                stop.wait(backoff.next())
            else:
                self._running()
                return True
        return False

    def _set_state(self, state: str, error: str = "") -> None:
        with self._mutex:
            self.stats.state, self.stats.state_since = state, time.time()
            if error:
                self.stats.last_error = error

    def _running(self) -> None:
        if self.stats.state != "running":
            self._set_state("running")
            logger.info("matcher %s: running", self.consumer)

    def _failed(self, exc: BaseException) -> None:
        """Note an exception of the loop (or a worker): an outage changes the state and
        is logged once, then every STILL_WAITING_LOG_SECONDS; anything else is logged with
        its traceback. Broken DB connections are closed either way."""
        close_old_connections()
        kind = outage_of(exc)
        error = f"{type(exc).__name__}: {str(exc)[:200]}"
        if kind is None:
            logger.error("matcher %s: step failed; retrying", self.consumer, exc_info=exc)
            return
        now = time.monotonic()
        state = _OUTAGE_STATES[kind]
        with self._mutex:
            first = self._outage is None
            if first or kind == "redis-data":
                self._outage = kind
            if first:
                self._outage_started = self._last_waiting_log = now
        if first or self.stats.state != state:
            self._set_state(state, error)
            logger.warning(
                "matcher %s: %s (%s); retrying with backoff, then re-synchronising",
                self.consumer,
                state,
                error,
            )
        elif now - self._last_waiting_log >= STILL_WAITING_LOG_SECONDS:
            self._last_waiting_log = now
            logger.warning(
                "matcher %s: still %s after %.0f s (%s)",
                self.consumer,
                state,
                now - self._outage_started,
                error,
            )

    def _recover(self) -> None:
        """Start, or re-synchronise after an outage: wait for the in-flight work (it fails
        fast while a service is down), then `start` or `resync`. Raises while a service is
        still down; the loop backs off and calls again."""
        with self._mutex:
            while self._in_flight:
                self._progress.wait()
            kind = self._outage
        if self._started:
            self.resync()
            # After Redis lost its data, a top the feed republished before the group existed
            # but before its first beat is neither in our stream position nor live for the
            # resync's sweep: sweep again once every feed beats. (Not at start, where a feed
            # that is not beating yet would make this one sweep a pause in the first fills.)
            self._sweep_when_live = not self._feeds_beating()
        else:
            self.start()
        with self._mutex:
            self._outage = None
        if kind is None:
            return
        logger.warning(
            "matcher %s: recovered from %s after %.1f s",
            self.consumer,
            _OUTAGE_STATES.get(kind or "", kind),
            time.monotonic() - self._outage_started,
        )

    def close(self) -> None:
        """Finish and acknowledge the queued work, then stop the worker threads (each closes
        its DB connection)."""
        try:
            self._ack_finished(wait=True)
        finally:
            self._stop_pool()

    def _stop_pool(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool = None

    def step(self, *, block_ms: int | None = None) -> int:
        """One read of each shard (blocking up to block_ms on the last one when the others
        had nothing), every fill it causes committed and its entries acknowledged on return;
        returns how many entries were read."""
        return self._step(block_ms=block_ms, flush=True)

    def _step(self, *, block_ms: int | None, flush: bool) -> int:
        """`step`; without `flush` the fills may still be running on the workers when it
        returns (the loop goes on reading: a slow fill does not hold up other tokens'), and
        finished batches are acknowledged as later steps find them done."""
        done = 0
        for n, shard in enumerate(self.shards):
            last = n == len(self.shards) - 1
            msgs = self.bus.read(
                shard,
                self.group,
                self.consumer,
                self.batch,
                block_ms=block_ms if (last and not done) else None,
                raw=True,
            )
            if msgs:
                self._process(shard, msgs)
                done += len(msgs)
        if not done:
            self.drain_events()
        self._ack_finished(wait=flush)
        return done

    # --- order events
    def drain_events(self) -> None:
        for shard in self.shards:
            while True:
                got = self.events.read_after(shard, self._event_ids[shard])
                if not got:
                    break
                for event_id, event in got:
                    self._event_ids[shard] = event_id
                    self.stats.order_events += 1
                    self._apply_event(event, check_last_top=True)
                if len(got) < 1000:
                    break

    def _apply_event(self, event: OrderEvent, *, check_last_top: bool) -> None:
        with self._mutex:
            if not event.resting:
                self.index.remove(event.order_id)
                return
            known = self.index.get(event.order_id) is not None
            r = resting_from_event(event)
            self.index.upsert(r)
        if check_last_top and not known:
            # The order committed after a top that already crossed it was processed (its
            # event came late): match it against that top now, under that top's own key.
            top, base = self._top_of(r.token_id)
            if (
                top is not None
                and top.fresh
                and r.created_ms <= top.published_at
                and self._crosses(r, top)
            ):
                # Behind any work already queued for the token; acknowledged with nothing.
                self._dispatch(r.token_id, functools.partial(self._fill_cross, r, top, base), None)

    # --- processing
    def _top_of(self, token: str) -> tuple[BookTop | None, str]:
        """The token's last top seen on the bus (decoded on first use) and its trigger base."""
        last = self._last_top.get(token)
        if last is None:
            return None, ""
        top, base = last
        if isinstance(top, bytes):
            top = BookTop.from_json(top)
            self._last_top[token] = (top, base)
        return top, base

    def _process(self, shard: int, msgs: list[BusMessage]) -> None:
        """Plan a read batch: decode the tops of tokens with resting orders, and hand each
        top that crosses one (and each print of such a token) to its token's queue. The
        batch is acknowledged once all of them are done (`_ack_finished`)."""
        self.drain_events()
        beat = self.bus.heartbeat_age_ms(shard)
        feed_alive = beat is not None and beat < self.bus.heartbeat_stale_ms
        batch = _Batch(shard, [m.id for m in msgs])
        self._batches.append(batch)
        for msg in msgs:
            base = entry_key(shard, msg.id)
            for i, trade in enumerate(msg.trades):
                self.stats.trades += 1
                if self.index.has_token(trade.token_id):
                    # The print happened after the token's previous top: that is its context.
                    prev, _ = self._top_of(trade.token_id)
                    work = functools.partial(
                        self._on_trade, trade, f"{base}{i:05d}t", feed_alive, prev
                    )
                    self._dispatch(trade.token_id, work, batch)
            tops: Iterable[BookTop | bytes] = msg.raw_tops or msg.tops
            for i, item in enumerate(tops):
                self.stats.tops += 1
                token = item.token_id if isinstance(item, BookTop) else top_token_id(item)
                key = f"{base}{i:05d}b"
                if not self.index.has_token(token):
                    # Nothing rests here: keep it undecoded, for late order events.
                    self._last_top[token] = (item, key)
                    continue
                # Decoded to a dict only: a BookTop is built when the top crosses something.
                data = _top_fields(item)
                if not data.get("fresh") or not feed_alive:
                    self._last_top[token] = (item, key)
                    with self._mutex:
                        self.stats.stale_skipped += 1
                    continue
                with self._mutex:
                    reaches = self.index.reaches(
                        token, _decimal(data.get("best_bid")), _decimal(data.get("best_ask"))
                    )
                if not reaches:
                    self._last_top[token] = (item, key)
                    continue
                top = item if isinstance(item, BookTop) else BookTop.from_dict(data)
                self._last_top[token] = (top, key)
                if self._candidates(top):
                    self._dispatch(token, functools.partial(self._on_top, top, key), batch)
            self.stats.entries += 1
        self._ack_finished()

    def _parallel(self) -> bool:
        # Worker threads have their own connections: they must not be used while this thread
        # is inside a transaction (they could not see its rows).
        if self.workers <= 1:
            return False
        return not connections[DEFAULT_DB_ALIAS].in_atomic_block

    def _dispatch(self, token: str, work: Callable[[], object], batch: _Batch | None) -> None:
        """Run `work` after every earlier work item of the same token (fills of one token in
        stream and priority order); items of different tokens run in parallel on the pool.
        Inline (at once, on this thread) when there are no workers to use."""
        if not self._parallel():
            work()
            return
        if self._pool is None:
            self._pool = WorkerPool(self.workers, name="matcher-worker")
        with self._mutex:
            while self._in_flight >= MAX_IN_FLIGHT:  # backpressure: let the workers catch up
                self._progress.wait()
            self._in_flight += 1
            if batch is not None:
                batch.left += 1
            queued = self._queues.get(token)
            if queued is not None:  # a worker is on this token: it takes this one next
                queued.append((work, batch))
                return
            self._queues[token] = deque([(work, batch)])
        self._pool.submit(functools.partial(self._drain_token, token))

    def _drain_token(self, token: str) -> None:
        """A worker: run the token's queued items until none is left. A failed item drops
        the token's remaining ones (priority would no longer hold) and leaves their batches
        unacknowledged: they are claimed and replayed later (idempotent)."""
        while True:
            with self._mutex:
                queued = self._queues[token]
                work = queued[0][0]
            try:
                work()
                failed = False
            except Exception as exc:
                # An outage is noted for the loop (which re-synchronises once the service is
                # back, sweeping this token's crossing orders again); anything else is a bug.
                if outage_of(exc) is None:
                    logger.exception("matcher: work on token %s failed", token)
                else:
                    self._failed(exc)
                failed = True
            with self._mutex:
                finished = [queued.popleft()]
                if failed:
                    finished += queued
                    queued.clear()
                for _, b in finished:
                    self._in_flight -= 1
                    if b is not None:
                        b.left -= 1
                        b.failed = b.failed or failed
                if not queued:
                    del self._queues[token]
                self._progress.notify_all()
                if not queued:
                    return

    def _ack_finished(self, *, wait: bool = False) -> None:
        """Acknowledge every read batch whose work is all done (committed), oldest first;
        `wait`: first wait until every queued item is done. A batch with a failed item is
        left pending."""
        with self._mutex:
            while wait and self._in_flight:
                self._progress.wait()
            finished = [b for b in self._batches if b.left == 0]
            self._batches = [b for b in self._batches if b.left]
        for b in finished:
            if b.failed:
                logger.warning("matcher: %d entries left pending after a failure", len(b.ids))
            else:
                self.bus.ack(b.shard, self.group, b.ids)

    @staticmethod
    def _crosses(r: Resting, top: BookTop) -> bool:
        if r.side == Side.BUY:
            return top.best_ask is not None and Decimal(top.best_ask) <= r.price
        return top.best_bid is not None and Decimal(top.best_bid) >= r.price

    def _candidates(self, top: BookTop) -> list[Resting]:
        """Resting orders `top` crosses, best price then oldest first, that are not newer
        than the top (never fill on a book older than the order)."""
        token = top.token_id
        out: list[Resting] = []
        with self._mutex:
            if top.best_ask is not None:
                out += self.index.crossing(token, Side.BUY, Decimal(top.best_ask))
            if top.best_bid is not None:
                out += self.index.crossing(token, Side.SELL, Decimal(top.best_bid))
        return [r for r in out if r.created_ms <= top.published_at]

    def _on_top(self, top: BookTop, base: str) -> None:
        for r in self._candidates(top):  # again: earlier items may have filled some
            self._fill_cross(r, top, base)

    def _account_lock(self, account_id: str) -> threading.Lock:
        return self._account_locks[hash(account_id) % ACCOUNT_STRIPES]

    def _fill_cross(self, r: Resting, top: BookTop, base: str) -> None:
        with self._account_lock(r.account_id):
            result = order_fill_maker_cross(
                order_id=r.order_id,
                account_id=r.account_id,
                trigger_key=f"m{base}:{r.order_id}",
                top=top,
            )
        with self._mutex:
            self.stats.crossing_orders += 1
            self._after(r, result, top.published_at)

    def _after(self, r: Resting, result: MakerResult, published_at: int) -> None:
        """Fold a service result into the index and the stats. Caller holds `_mutex`."""
        if result.outcome == "filled":
            self.stats.fills += 1
            self.stats.filled_size += result.size
            if len(self.stats.latencies_ms) < MAX_LATENCY_SAMPLES:
                self.stats.latencies_ms.append(time.time() * 1000 - published_at)
        elif result.outcome == "duplicate":
            self.stats.duplicates += 1
        if result.outcome == "gone" or result.remaining <= 0:
            self.index.remove(r.order_id)
        else:
            r.remaining, r.queue_ahead = result.remaining, result.queue_ahead

    def _on_trade(
        self, trade: TradePrint, base: str, feed_alive: bool, top: BookTop | None
    ) -> None:
        token = trade.token_id
        if not feed_alive or (top is not None and not top.fresh):
            with self._mutex:
                self.stats.stale_skipped += 1
            return
        price = trade.price_value()
        pool = trade.size_value()
        # The taker's side says which resting side the print went through: a SELL taker hit
        # bids (our BUYs at or above its price), a BUY taker lifted asks (our SELLs at or
        # below). Unknown side: both.
        sides = {"SELL": [Side.BUY], "BUY": [Side.SELL]}.get(
            trade.side or "", [Side.BUY, Side.SELL]
        )
        for side in sides:
            with self._mutex:
                crossing = self.index.crossing(token, side, price)
            orders = [r for r in crossing if r.created_ms <= trade.published_at]
            through = [r for r in orders if r.price != price]
            at = [r for r in orders if r.price == price]
            for r in through:
                if pool <= 0:
                    break
                pool -= self._fill_trade(r, trade, base, pool, top)
            self._queue(at, trade, base, pool, top)

    def _fill_trade(
        self, r: Resting, trade: TradePrint, base: str, pool: Decimal, top: BookTop | None
    ) -> Decimal:
        with self._account_lock(r.account_id):
            result = order_fill_maker_trade(
                order_id=r.order_id,
                account_id=r.account_id,
                trigger_key=f"m{base}:{r.order_id}",
                queue_trigger=base,
                trade=trade,
                available=pool,
                top=top,
            )
        with self._mutex:
            self.stats.crossing_orders += 1
            self._after(r, result, trade.published_at)
        return result.size

    def _queue(
        self,
        orders: list[Resting],
        trade: TradePrint,
        base: str,
        pool: Decimal,
        top: BookTop | None,
    ) -> None:
        """A print at exactly the orders' price: it first consumes the size queued ahead of
        each (persisted, one UPDATE for every order it does not reach), then fills the ones
        it reaches, oldest first, from what is left of the print."""
        size = trade.size_value()
        short = [r for r in orders if r.queue_ahead >= size]
        if short:
            from django.db.models import F, Value
            from django.db.models.functions import Greatest

            Order.objects.filter(
                pk__in=[r.order_id for r in short],
                status=Order.Status.LIVE,
                queue_trigger__lt=base,
            ).update(
                queue_ahead=Greatest(F("queue_ahead") - size, Value(ZERO)),
                queue_trigger=base,
            )
            with self._mutex:
                for r in short:
                    r.queue_ahead -= size
                self.stats.queue_advances += len(short)
        for r in orders:
            if r.queue_ahead < size:
                pool -= self._fill_trade(r, trade, base, max(pool, ZERO), top)


def parse_shard(text: str | None, default_shards: int) -> tuple[list[int], int]:
    """ "i/N" → ([i], N); None → every shard of PRICE_BUS_SHARDS."""
    if not text:
        return list(range(default_shards)), default_shards
    try:
        i_text, _, n_text = text.partition("/")
        i, n = int(i_text), int(n_text)
    except ValueError as exc:
        raise ValueError(f"--shard must look like i/N, not {text!r}") from exc
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: need 0 <= i < N")
    return [i], n


def default_consumer(shards: list[int]) -> str:
    """Stable per shard set and host, so a restarted matcher re-reads its own pending
    entries at once; a matcher that never comes back has them claimed by another after
    MATCHER_CLAIM_IDLE_SECONDS."""
    return f"matcher-{'-'.join(map(str, shards))}@{socket.gethostname()}"
