"""Order events: how a maker matcher learns, within milliseconds, that an order started or
stopped resting (docs/engine-rules.md §4, docs/fill-model.md "Maker fills").

The DB is the source of truth; these events only keep each matcher's in-memory index of
resting orders current between its periodic reconciles from the DB. So they are published
AFTER the transaction commits (`transaction.on_commit`), best effort: a lost event delays a
fill until the next reconcile (MATCHER_RECONCILE_SECONDS), it can never cause a wrong one —
every fill re-reads and locks the order row.

One stream per price-bus shard (the shard of the order's token), so a matcher reads only
its shard's events, with plain XREAD from the last id it saw (no consumer group: every
matcher of a shard needs every event). Stored, like the price bus, on Redis
(settings.REDIS_URL): streams `trading:orders:<shard>`, trimmed with MAXLEN ~.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Protocol

import orjson

from marketdata.bus import shard_of

logger = logging.getLogger("polysim.trading")

STREAM_KEY: Final = "trading:orders:"  # + shard
DEFAULT_MAXLEN: Final = 100_000


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """An order's matching-relevant state right after a commit. `remaining` is 0 and `status`
    not `live` when it stopped resting; `created_ms` is its creation time (epoch ms)."""

    order_id: str
    account_id: str
    token_id: str
    side: str
    price: str
    remaining: str
    status: str
    created_ms: int
    queue_ahead: str

    @property
    def resting(self) -> bool:
        return self.status == "live" and Decimal(self.remaining) > 0

    def to_json(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> OrderEvent:
        return cls(**orjson.loads(data))


def epoch_ms(at: dt.datetime) -> int:
    return int(at.timestamp() * 1000)


def order_event(order: Any) -> OrderEvent:
    """The event for an Order row as it is now (a limit order: `size` is set)."""
    remaining = (order.size or Decimal(0)) - order.filled_size
    return OrderEvent(
        str(order.pk),
        str(order.account_id),
        order.token_id,
        order.side,
        str(order.price),
        str(remaining if order.status == "live" else Decimal(0)),
        order.status,
        epoch_ms(order.created_at),
        str(order.queue_ahead),
    )


class OrderEventLog(Protocol):
    n_shards: int

    def publish(self, events: Sequence[OrderEvent]) -> None: ...

    def last_id(self, shard: int) -> str:
        """The id of the newest event of the shard ("0-0" when none): read from there to
        see only what comes after (take it BEFORE loading the index from the DB)."""

    def read_after(
        self, shard: int, after_id: str, count: int = 1000
    ) -> list[tuple[str, OrderEvent]]:
        """Events after `after_id`, oldest first, at most `count` (non-blocking)."""


class RedisOrderEvents:
    def __init__(self, client: Any, *, n_shards: int = 1, maxlen: int = DEFAULT_MAXLEN) -> None:
        self.client = client
        self.n_shards = n_shards
        self.maxlen = maxlen

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisOrderEvents:
        import redis

        return cls(redis.Redis.from_url(url, decode_responses=False), **kwargs)

    def publish(self, events: Sequence[OrderEvent]) -> None:
        if not events:
            return
        pipe = self.client.pipeline(transaction=False)
        for event in events:
            shard = shard_of(event.token_id, self.n_shards)
            pipe.xadd(
                f"{STREAM_KEY}{shard}",
                {"e": event.to_json()},
                maxlen=self.maxlen,
                approximate=True,
            )
        pipe.execute()

    def last_id(self, shard: int) -> str:
        rows = self.client.xrevrange(f"{STREAM_KEY}{shard}", count=1)
        if not rows:
            return "0-0"
        entry_id = rows[0][0]
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def read_after(
        self, shard: int, after_id: str, count: int = 1000
    ) -> list[tuple[str, OrderEvent]]:
        reply: Any = self.client.xread({f"{STREAM_KEY}{shard}": after_id}, count=count)
        if not reply:
            return []
        entries = next(iter(reply.values()))[0] if isinstance(reply, dict) else reply[0][1]
        out = []
        for entry_id, data in entries:
            text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            out.append((text, OrderEvent.from_json(data[b"e"])))
        return out


_lock = threading.Lock()
_redis: dict[tuple[str, int], RedisOrderEvents] = {}


def get_order_events() -> RedisOrderEvents:
    """The order-event streams on settings.REDIS_URL, sharded like the price bus
    (PRICE_BUS_SHARDS); one client per URL and process."""
    from django.conf import settings

    url = str(settings.REDIS_URL)
    n_shards = int(getattr(settings, "PRICE_BUS_SHARDS", 1) or 1)
    with _lock:
        found = _redis.get((url, n_shards))
        if found is None:
            found = _redis[(url, n_shards)] = RedisOrderEvents.from_url(url, n_shards=n_shards)
        return found


def reset_order_events() -> None:
    """Forget this process's Redis clients (tests)."""
    with _lock:
        _redis.clear()


def order_events_publish_on_commit(orders: Iterable[Any]) -> None:
    """Publish the orders' events once the current transaction commits (at once outside
    one). Best effort: a failure is logged — the matchers' reconcile catches up."""
    events = [order_event(o) for o in orders if o.size is not None]
    if not events:
        return

    def send() -> None:
        try:
            get_order_events().publish(events)
        except Exception:
            logger.exception("order events: could not publish %d event(s)", len(events))

    from django.db import transaction

    transaction.on_commit(send)
