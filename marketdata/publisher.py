"""The feed's publisher: `RedisBus.publish_json` without waiting for Redis.

`RedisBus.publish_json` sends one pipeline (MSET of the latest tops + one XADD per shard) and
waits for the replies: the feed process sat idle while Redis stored the batch. The feed only
needs to know that its writes succeeded, not to wait for them, so `PipelinedPublisher` writes
the same commands on a connection of its own and reads their replies at the start of the next
publish (or `flush()`): Redis stores a batch while the feed parses the next one. At most one
batch is in flight; an error reply or a broken connection raises at the next publish (at most
one flush interval later), after which the next publish starts afresh.

Readers see the same keys and stream entries, byte for byte (a test compares both). Not for
code that reads its own writes right after publishing on another connection: use the bus.

The ingester publishes through `publish_keeper(keeper, trades)`: on the pipelined publisher
the keeper's due tops are packed as they are encoded (`BookKeeper.drain_tops_packed`, one C
pass on the compiled path), the same bytes as `publish_json(keeper.drain_tops_json(), trades)`.

`publisher_for(bus)` gives the ingester a publisher for any bus: pipelined on a RedisBus, the
bus itself otherwise (InProcessBus applies a publish at once).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import redis

from marketdata import fastbook
from marketdata.bus import (
    BOOK_KEY,
    STREAM_KEY,
    EncodedTop,
    EncodedTrade,
    PriceBus,
    RedisBus,
    _by_shard,
    _trades_by_shard,
)

if TYPE_CHECKING:
    from marketdata.messages import BookKeeper


class Publisher(Protocol):
    def publish_json(
        self, items: Sequence[EncodedTop], trades: Sequence[EncodedTrade] = ()
    ) -> None: ...

    def publish_keeper(self, keeper: BookKeeper, trades: Sequence[EncodedTrade] = ()) -> None:
        """`publish_json(keeper.drain_tops_json(), trades)`: the keeper's due tops, drained
        and published (the ingester's flush)."""

    def flush(self) -> None:
        """Wait until everything published so far is stored; raise if any of it failed."""


def _bulk(parts: list[bytes], arg: bytes) -> None:
    parts.append(b"$%d\r\n" % len(arg))
    parts.append(arg)
    parts.append(b"\r\n")


def pack_publish(
    items: Sequence[EncodedTop],
    n_shards: int,
    maxlen: int,
    trades: Sequence[EncodedTrade] = (),
) -> tuple[bytes, int]:
    """The RESP bytes of `RedisBus.publish_json(items, trades)`'s commands, and how many
    replies they get: MSET of each token's latest top (when there is one), then per shard
    touched XADD md:updates:<shard> MAXLEN ~ <maxlen> * tops <the shard's tops, one per line>
    [trades <the shard's trade prints, one per line>]."""
    latest, by_shard = _by_shard(items, n_shards)
    trades_by = _trades_by_shard(trades, n_shards) if trades else {}
    parts: list[bytes] = []
    if latest:
        parts.append(b"*%d\r\n$4\r\nMSET\r\n" % (1 + 2 * len(latest)))
        for token_id, blob in latest.items():
            _bulk(parts, (BOOK_KEY + token_id).encode())
            _bulk(parts, blob)
    cap = str(maxlen).encode()
    shards = list(by_shard) if not trades_by else sorted(by_shard.keys() | trades_by.keys())
    for shard in shards:
        prints = trades_by.get(shard)
        parts.append(b"*10\r\n$4\r\nXADD\r\n" if prints else b"*8\r\n$4\r\nXADD\r\n")
        _bulk(parts, f"{STREAM_KEY}{shard}".encode())
        parts.append(b"$6\r\nMAXLEN\r\n$1\r\n~\r\n")
        _bulk(parts, cap)
        parts.append(b"$1\r\n*\r\n$4\r\ntops\r\n")
        _bulk(parts, b"\n".join(by_shard.get(shard, ())))
        if prints:
            parts.append(b"$6\r\ntrades\r\n")
            _bulk(parts, b"\n".join(prints))
    return b"".join(parts), (1 if latest else 0) + len(shards)


_BOOK_PREFIX, _STREAM_PREFIX = BOOK_KEY.encode(), STREAM_KEY.encode()


def _pack(
    items: Sequence[EncodedTop], n_shards: int, maxlen: int, trades: Sequence[EncodedTrade]
) -> tuple[bytes, int]:
    """`pack_publish`, compiled when marketdata._fastbook is loaded (same bytes: tested).
    Batches with trade prints (rare next to book changes) take the Python packer."""
    native = fastbook.native
    if native is None or trades:
        return pack_publish(items, n_shards, maxlen, trades)
    return native.pack_publish(  # type: ignore[no-any-return]
        items, n_shards, maxlen, _BOOK_PREFIX, _STREAM_PREFIX
    )


class PipelinedPublisher:
    """See the module docstring. Thread-safe (one lock around its connection)."""

    def __init__(self, bus: RedisBus) -> None:
        self.bus = bus
        self._lock = threading.Lock()
        self._conn: Any = None  # a redis.Connection of our own while batches are in flight
        self._pending = 0  # replies not read yet

    def publish_json(
        self, items: Sequence[EncodedTop], trades: Sequence[EncodedTrade] = ()
    ) -> None:
        if not items and not trades:
            self.publish_packed(b"", 0)  # still collects the previous publish's replies
            return
        self.publish_packed(*_pack(items, self.bus.n_shards, self.bus.maxlen, trades))

    def publish_keeper(self, keeper: BookKeeper, trades: Sequence[EncodedTrade] = ()) -> None:
        """The same as `publish_json(keeper.drain_tops_json(), trades)`, byte for byte; without
        trade prints (nearly every flush) the tops are packed as they are encoded
        (`BookKeeper.drain_tops_packed`: compiled, no bytes object per top)."""
        if trades:
            self.publish_json(keeper.drain_tops_json(), trades)
            return
        payload, replies, _ = keeper.drain_tops_packed(self.bus.n_shards, self.bus.maxlen)
        self.publish_packed(payload, replies)

    def publish_packed(self, payload: bytes, replies: int) -> None:
        """Write a packed batch (`pack_publish`'s result) after reading the previous one's
        replies; replies=0 (nothing to send) only reads them."""
        with self._lock:
            self._read_pending()
            if not replies:
                return
            conn = self._connection()
            try:
                conn.send_packed_command([payload], check_health=False)
            except BaseException:
                self._drop()
                raise
            self._pending = replies

    def flush(self) -> None:
        with self._lock:
            self._read_pending()
            if self._conn is not None:  # nothing in flight: hand the connection back
                self.bus.client.connection_pool.release(self._conn)
                self._conn = None

    close = flush

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self.bus.client.connection_pool.get_connection()
        return self._conn

    def _read_pending(self) -> None:
        if not self._pending:
            return
        conn, error = self._conn, None
        try:
            for _ in range(self._pending):
                try:
                    conn.read_response()
                except redis.ResponseError as exc:  # keep reading: the stream stays in step
                    error = error or exc
        except BaseException:
            self._drop()
            raise
        self._pending = 0
        if error is not None:
            raise error

    def _drop(self) -> None:
        """After a connection failure: the in-flight replies are lost with the connection."""
        conn, self._conn, self._pending = self._conn, None, 0
        if conn is not None:
            conn.disconnect()
            self.bus.client.connection_pool.release(conn)


class _Immediate:
    def __init__(self, bus: PriceBus) -> None:
        self.publish_json = bus.publish_json

    def publish_keeper(self, keeper: BookKeeper, trades: Sequence[EncodedTrade] = ()) -> None:
        self.publish_json(keeper.drain_tops_json(), trades)

    def flush(self) -> None:
        pass


def publisher_for(bus: PriceBus) -> Publisher:
    """Pipelined on a RedisBus, the bus itself on any other."""
    if isinstance(bus, RedisBus):
        return PipelinedPublisher(bus)
    return _Immediate(bus)
