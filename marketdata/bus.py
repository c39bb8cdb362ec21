"""The price bus: the latest top of book per token for readers, and a stream of updates per
shard for the matcher (ARCHITECTURE.md, "Price bus").

One implementation, `RedisBus`, in every mode (ARCHITECTURE.md: no in-process stand-in for
Redis; `PriceBus` is its name for type hints):

* The latest top of each token is one key `md:book:<token_id>`
  holding its JSON, so N tokens are read with ONE `MGET`. Updates go to one Redis Stream per
  shard, `md:updates:<shard>`, trimmed with `MAXLEN ~`. One stream entry carries the tops of
  one `publish()` call for that shard (field `tops`: one BookTop JSON per line), so a batch
  of any size costs one pipeline round trip: one `MSET` plus one `XADD` per shard it
  touches (not atomic: a reader may see a new latest top a moment before its stream
  entry). The matcher reads with consumer groups: `read` (XREADGROUP `>`), `ack` (XACK),
  `read_pending` (its own unacknowledged entries after a restart) and `claim_stale`
  (XAUTOCLAIM of another consumer's entries after `min_idle_ms`): at-least-once, so fills
  must be idempotent. An entry may also carry the shard's trade prints since the previous
  publish (field `trades`: one TradePrint JSON per line): events, not state, so they are
  only on the stream, never in the latest-top keys (the maker matcher's trade-through
  rule, docs/engine-rules.md §4).

Prices and sizes are the exchange's exact decimal strings everywhere on the bus; the
`*_value()` methods give Decimals for trading math. Never float.

Sharding: `shard_of(token_id, n)` = CRC-32 of the token id mod n: stable across processes
and machines (Python's `hash()` of a str is randomised per process).

Liveness (docs/engine-rules.md §8): a top's `fresh` flag is only as good as the feed process that
maintains it: a feed that dies or hangs without closing its sockets never publishes its books
stale. So each feed also calls `heartbeat(shard)` while it is healthy (every 500 ms), and a
top is *live* only when it is fresh AND its shard's heartbeat is younger than
`heartbeat_stale_ms` (PRICE_BUS_HEARTBEAT_STALE_SECONDS, default 2 s). That rule is
`_live_tops`, the one place every reader's answer comes from (`live`, `latest_live`,
`latest_many_live`, `latest_many_live_and_get`); readers that act on a book (the engine's
STALE_BOOK rule) use `latest_live()`: the top and its shard's heartbeat in ONE round trip.

`md:heartbeat:<shard>` holds the epoch ms of the last beat, taken from the Redis
  server's clock (`TIME` inside a small script), and `latest_live()` reads the current
  server `TIME` in the same pipeline as its `MGET`. The age is therefore measured on one
  clock, the Redis server's: skew between feed, web and matcher hosts does not matter. Only a
  step of the Redis host's own clock does: forward, books read stale until the next beat (at
  most a second); backward by S, a heartbeat "from the future" counts as just written, so a
  feed that died right then is noticed up to S late.

A heartbeat newer than the reading clock (negative age) counts as age 0 (see above).
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import orjson

if TYPE_CHECKING:
    import redis

    from marketdata.book import OrderBook

BOOK_KEY: Final = "md:book:"  # + token_id
STREAM_KEY: Final = "md:updates:"  # + shard number
HEARTBEAT_KEY: Final = "md:heartbeat:"  # + shard number -> epoch ms of the feed's last beat
DEFAULT_HEARTBEAT_STALE_MS: Final = 2_000
DEFAULT_MAXLEN: Final = 100_000  # stream entries (batches) kept per shard, approximately
DEFAULT_DEPTH: Final = 10
_ROUTES_MAX: Final = 200_000  # RedisBus._routes: tokens remembered (bounded by clearing)
TRADES_KEY: Final = "md:trades:"  # + token_id -> its last trade prints, newest first
DEFAULT_TRADES_KEPT: Final = 50  # prints kept per token (a display ring, not a history)


def shard_of(token_id: str, n_shards: int) -> int:
    """The shard that owns a token: CRC-32 of its id mod n (stable across processes)."""
    if n_shards <= 1:
        return 0
    return zlib.crc32(token_id.encode()) % n_shards


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def timestamp_ms(ts: str) -> int | None:
    """The exchange's timestamp text as epoch ms, or None when it is not a plain digit string
    of at most 18 significant digits (anything longer cannot be a time, and would not fit the
    64-bit integer a reader's JSON parser may expect)."""
    if ts.isascii() and ts.isdigit() and len(ts.lstrip("0")) <= 18:
        return int(ts)
    return None


# (best_bid, best_ask) -> (mid, spread) as strings: the same few pairs recur all day, and the
# Decimal arithmetic plus formatting costs more than the lookup. Bounded by clearing.
_MID_SPREAD: dict[tuple[str, str], tuple[str, str]] = {}
_MID_SPREAD_MAX: Final = 50_000


def _fmt(value: Decimal) -> str:
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def mid_spread(best_bid: str, best_ask: str) -> tuple[str, str]:
    key = (best_bid, best_ask)
    cached = _MID_SPREAD.get(key)
    if cached is None:
        bid, ask = Decimal(best_bid), Decimal(best_ask)
        cached = (_fmt((bid + ask) / 2), _fmt(ask - bid))
        if len(_MID_SPREAD) >= _MID_SPREAD_MAX:
            _MID_SPREAD.clear()
        _MID_SPREAD[key] = cached
    return cached


def _dec(text: str | None) -> Decimal | None:
    return Decimal(text) if text else None


@dataclass(frozen=True, slots=True)
class BookTop:
    """What readers need of one token's book, as published on the bus.

    `bids`/`asks`: the top levels best-first (bids high to low, asks low to high) as
    [price, size] exact strings; `bid_versions`/`ask_versions` the versions of those levels,
    in the same order: a level's version changes whenever the feed sets it (marketdata/book.py,
    "Level versions"), and the depletion memory belongs to one version of a level
    (docs/fill-model.md, "Depletion"). Empty in a top built by hand. `mid`/`spread` are
    exact decimal strings (None unless both sides have a level; a crossed book inside a trade
    burst gives a negative spread).
    `fresh` is False while the feed knows the book may be wrong (no snapshot yet, hash
    mismatch waiting for a resync, lost subscription): stale books take no taker orders
    and trigger no maker fills (docs/engine-rules.md §8). `timestamp_ms` is the exchange's,
    `published_at` ours (epoch ms).
    """

    token_id: str
    market: str
    best_bid: str | None
    best_ask: str | None
    mid: str | None
    spread: str | None
    last_trade_price: str | None
    last_trade_side: str | None
    tick_size: str | None
    timestamp_ms: int | None
    hash: str
    fresh: bool
    bids: list[list[str]]
    bid_versions: list[int] = field(default_factory=list, kw_only=True)
    asks: list[list[str]]
    ask_versions: list[int] = field(default_factory=list, kw_only=True)
    published_at: int

    @classmethod
    def from_book(
        cls,
        book: OrderBook,
        *,
        fresh: bool = True,
        last_trade_side: str | None = None,
        depth: int = DEFAULT_DEPTH,
        published_at: int | None = None,
    ) -> BookTop:
        """The top as the feed publishes it (decoded from `encode_top`: one encoder)."""
        return cls.from_json(
            encode_top(
                book,
                fresh=fresh,
                last_trade_side=last_trade_side,
                depth=depth,
                published_at=published_at,
            )
        )

    # --- JSON --------------------------------------------------------------------------------

    def to_json(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BookTop:
        values: dict[str, Any] = {name: data.get(name) for name in _FIELD_NAMES}
        for name in _VERSION_FIELDS:  # absent from a top published before versions existed
            if values[name] is None:
                values[name] = []
        return cls(**values)

    @classmethod
    def from_json(cls, data: bytes | str) -> BookTop:
        return cls.from_dict(orjson.loads(data))

    def with_fresh(self, fresh: bool, *, published_at: int | None = None) -> BookTop:
        return replace(
            self, fresh=fresh, published_at=now_ms() if published_at is None else published_at
        )

    # --- Decimal views (for trading math) ----------------------------------------------------

    def best_bid_value(self) -> Decimal | None:
        return _dec(self.best_bid)

    def best_ask_value(self) -> Decimal | None:
        return _dec(self.best_ask)

    def mid_value(self) -> Decimal | None:
        return _dec(self.mid)

    def spread_value(self) -> Decimal | None:
        return _dec(self.spread)

    def last_trade_price_value(self) -> Decimal | None:
        return _dec(self.last_trade_price)

    def tick_size_value(self) -> Decimal | None:
        return _dec(self.tick_size)

    def levels_value(self, side: str) -> list[tuple[Decimal, Decimal]]:
        """(price, size) best-first for "BUY" (bids) or "SELL" (asks)."""
        if side not in ("BUY", "SELL"):
            raise ValueError(f"side must be BUY or SELL, not {side!r}")
        rows = self.bids if side == "BUY" else self.asks
        return [(Decimal(p), Decimal(s)) for p, s in rows]


_FIELD_NAMES: Final = tuple(f.name for f in fields(BookTop))
_VERSION_FIELDS: Final = ("bid_versions", "ask_versions")


@dataclass(frozen=True, slots=True)
class TradePrint:
    """One `last_trade_price` event as the feed saw it: a real trade on the exchange.
    `side` is the taker's (BUY lifted asks, SELL hit bids; None if the exchange omitted it),
    `timestamp_ms` the exchange's, `published_at` ours (epoch ms), `fee_rate_bps` the
    exchange's fee rate on that trade (None when it omitted it). Exact decimal strings."""

    token_id: str
    price: str
    size: str
    side: str | None
    timestamp_ms: int | None
    published_at: int
    fee_rate_bps: str | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> TradePrint:
        d = orjson.loads(data)
        return cls(
            d["token_id"],
            d["price"],
            d["size"],
            d.get("side"),
            d.get("timestamp_ms"),
            d["published_at"],
            d.get("fee_rate_bps"),
        )

    def price_value(self) -> Decimal:
        return Decimal(self.price)

    def size_value(self) -> Decimal:
        return Decimal(self.size)


# A trade print as published: (token_id, the TradePrint's JSON).
EncodedTrade = tuple[str, bytes]

# A token's top as published: (token_id, the BookTop's JSON).
EncodedTop = tuple[str, bytes]


# Pieces of a top's JSON that recur from one top to the next, cached by the values they encode
# (each bounded by clearing): the token and market; the best bid/ask with their mid and spread;
# the last trade and tick size; the exchange timestamp. Each piece is orjson's own output (a
# dict's members, braces stripped) with the separator that follows it in the top, so the
# assembled top is byte-identical to BookTop's JSON.
_HEAD_JSON: dict[tuple[str, str], bytes] = {}
_QUOTE_JSON: dict[tuple[str | None, str | None], bytes] = {}
_TRADE_JSON: dict[tuple[str | None, str | None, str | None], bytes] = {}
_TS_JSON: dict[str, bytes] = {}
_PIECES_MAX: Final = 50_000
_FRESH_JSON: Final = (b',"fresh":false,', b',"fresh":true,')


def _piece(cache: dict[Any, bytes], key: Any, members: dict[str, Any], end: bytes) -> bytes:
    """`members` as JSON without its closing brace (the top's opening one for the head)
    followed by `end`, cached under `key`."""
    if len(cache) >= _PIECES_MAX:
        cache.clear()
    text = orjson.dumps(members)[:-1]
    piece = cache[key] = (text if cache is _HEAD_JSON else text[1:]) + end
    return piece


def encode_top(
    book: OrderBook,
    *,
    fresh: bool = True,
    last_trade_side: str | None = None,
    depth: int = DEFAULT_DEPTH,
    published_at: int | None = None,
) -> bytes:
    """A book's top as published on the bus: `BookTop`'s JSON (its field order; a test holds
    the two equal). One top of `encode_tops`."""
    at = now_ms() if published_at is None else published_at
    return encode_tops([(book, fresh, last_trade_side)], depth=depth, published_at=at)[0]


def encode_tops(
    items: Iterable[tuple[OrderBook, bool, str | None]], *, depth: int, published_at: int
) -> list[bytes]:
    """The tops of (book, fresh, last trade side) items stamped with one `published_at` (a
    feed flush): built without a BookTop on the feed's hot path from the cached pieces
    (above) and the levels' JSON, which each book caches per side until that side changes."""
    heads, quotes, trades, stamps = _HEAD_JSON, _QUOTE_JSON, _TRADE_JSON, _TS_JSON
    dumps, join = orjson.dumps, b"".join
    tail = b',"published_at":%d}' % published_at
    out: list[bytes] = []
    append = out.append
    for book, fresh, last_trade_side in items:
        key = (book.asset_id, book.market)
        head = heads.get(key)
        if head is None:
            head = _piece(heads, key, {"token_id": key[0], "market": key[1]}, b",")
        quote_key = (book.best_bid_str(), book.best_ask_str())
        quote = quotes.get(quote_key)
        if quote is None:
            best_bid, best_ask = quote_key
            mid = spread = None
            if best_bid is not None and best_ask is not None:
                mid, spread = mid_spread(best_bid, best_ask)
            quote = _piece(
                quotes,
                quote_key,
                {"best_bid": best_bid, "best_ask": best_ask, "mid": mid, "spread": spread},
                b",",
            )
        trade_key = (book.last_trade_price or None, last_trade_side, book.tick_size)
        trade = trades.get(trade_key)
        if trade is None:
            ltp, side, tick = trade_key
            trade = _piece(
                trades,
                trade_key,
                {"last_trade_price": ltp, "last_trade_side": side, "tick_size": tick},
                b",",
            )
        ts = stamps.get(book.timestamp)
        if ts is None:
            stamp = {"timestamp_ms": timestamp_ms(book.timestamp)}
            ts = _piece(stamps, book.timestamp, stamp, b',"hash":')
        append(
            join(
                (
                    head,
                    quote,
                    trade,
                    ts,
                    dumps(book.hash),
                    _FRESH_JSON[fresh],
                    book.top_levels_json("BUY", depth),
                    b",",
                    book.top_levels_json("SELL", depth),
                    tail,
                )
            )
        )
    return out


class LiveTop(NamedTuple):
    """A token's latest top and whether it may be acted on now: `live` is True only when
    the top exists, is `fresh`, and its shard's feed heartbeat is young enough."""

    top: BookTop | None
    live: bool


def top_is_live(top: BookTop, beat_ms: int | None, now: int, stale_ms: int) -> bool:
    """THE freshness rule readers apply (module docstring, "Liveness"): the feed published the
    top `fresh` and its shard's heartbeat is younger than stale_ms (a missing one never is;
    one from the future counts as just written)."""
    return top.fresh and beat_ms is not None and now - beat_ms < stale_ms


def _not_fresh(top: BookTop) -> BookTop:
    return top.with_fresh(False, published_at=top.published_at)


class BusMessage(NamedTuple):
    """One stream entry: the tops of one publish() for one shard, in publish order, and the
    trade prints published with them (they happened before those tops were built)."""

    id: str
    tops: list[BookTop]
    trades: Sequence[TradePrint] = ()
    # With `raw=True` reads: the tops still encoded (one BookTop JSON each, `tops` empty), so a
    # reader interested in a few tokens decodes only theirs (`top_token_id`).
    raw_tops: Sequence[bytes] = ()


_TOKEN_PREFIX: Final = b'{"token_id":"'


def top_token_id(blob: bytes) -> str:
    """The token of an encoded top without decoding it: `encode_top` and `BookTop.to_json`
    both write `token_id` first, and token ids never need escaping; anything else is parsed."""
    if blob.startswith(_TOKEN_PREFIX):
        end = blob.find(b'"', len(_TOKEN_PREFIX))
        if end > 0 and b"\\" not in blob[len(_TOKEN_PREFIX) : end]:
            return blob[len(_TOKEN_PREFIX) : end].decode()
    return str(orjson.loads(blob)["token_id"])


def _split_tops(blob: bytes) -> list[bytes]:
    return [line for line in blob.split(b"\n") if line]


def _decode_tops(blob: bytes) -> list[BookTop]:
    """A stream entry's `tops` field: one BookTop JSON per line (JSON never contains a raw
    newline, orjson escapes it inside strings)."""
    return [BookTop.from_json(line) for line in blob.split(b"\n") if line]


def _decode_trades(blob: bytes | None) -> list[TradePrint]:
    return [TradePrint.from_json(line) for line in blob.split(b"\n") if line] if blob else []


def _trades_by_shard(trades: Sequence[EncodedTrade], n_shards: int) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for token_id, blob in trades:
        out.setdefault(shard_of(token_id, n_shards), []).append(blob)
    return out


# --- Redis ------------------------------------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# Stamp a shard's heartbeat with the Redis server's clock (one round trip; EVALSHA after the
# first call), or with ARGV[2] when given. With ARGV[1] non-empty, write only over that value
# (the beat the caller wrote last) and return 0 otherwise: the feed learns that Redis lost or
# replaced its writes. Scripts may call TIME before writing since Redis 5 (effects replication).
_HEARTBEAT_LUA: Final = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local ms = tonumber(ARGV[2])
if not ms then
  local t = redis.call('TIME')
  ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
redis.call('SET', KEYS[1], string.format('%d', ms))
return ms
"""


def _time_ms(reply: Any) -> int:
    """A `TIME` reply ([seconds, microseconds]) as epoch ms."""
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


def _int_or_none(value: bytes | str | None) -> int | None:
    return None if value is None else int(value)


class RedisBus:
    """The bus on Redis (see the module docstring for the key layout)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        n_shards: int = 1,
        maxlen: int = DEFAULT_MAXLEN,
        heartbeat_stale_ms: int = DEFAULT_HEARTBEAT_STALE_MS,
    ) -> None:
        if n_shards < 1:
            raise ValueError("n_shards must be >= 1")
        self.client = client
        self.n_shards = n_shards
        self.maxlen = maxlen
        self.heartbeat_stale_ms = heartbeat_stale_ms
        self._heartbeat_script = client.register_script(_HEARTBEAT_LUA)
        # token -> (its latest-top key, its shard): computed once per token, not per publish
        self._routes: dict[str, tuple[str, int]] = {}

    @classmethod
    def from_url(
        cls, url: str, *, client_options: dict[str, Any] | None = None, **kwargs: Any
    ) -> RedisBus:
        """`client_options` go to redis-py (the feed sets socket timeouts: a Redis that stops
        answering must not hold its event loop for long, see marketdata/ingest.py)."""
        import redis

        # Raw bytes in and out: orjson parses bytes directly.
        client = redis.Redis.from_url(url, decode_responses=False, **(client_options or {}))
        return cls(client, **kwargs)

    def shard_of(self, token_id: str) -> int:
        route = self._routes.get(token_id)
        return self._route(token_id)[1] if route is None else route[1]

    def _route(self, token_id: str) -> tuple[str, int]:
        if len(self._routes) >= _ROUTES_MAX:
            self._routes.clear()
        route = self._routes[token_id] = (BOOK_KEY + token_id, shard_of(token_id, self.n_shards))
        return route

    def _by_shard(
        self, items: Sequence[EncodedTop]
    ) -> tuple[list[bytes | str], dict[int, list[bytes]]]:
        """MSET's arguments (key, JSON, key, JSON...: a later top of the same token wins, as
        MSET sets in order), and every top by shard."""
        routes = self._routes
        latest: list[bytes | str] = []
        extend = latest.extend
        by_shard: dict[int, list[bytes]] = {}
        for token_id, blob in items:
            route = routes.get(token_id)
            key, shard = self._route(token_id) if route is None else route
            extend((key, blob))
            blobs = by_shard.get(shard)
            if blobs is None:
                by_shard[shard] = [blob]
            else:
                blobs.append(blob)
        return latest, by_shard

    @staticmethod
    def book_key(token_id: str) -> str:
        return BOOK_KEY + token_id

    @staticmethod
    def stream_key(shard: int) -> str:
        return f"{STREAM_KEY}{shard}"

    @staticmethod
    def heartbeat_key(shard: int) -> str:
        return f"{HEARTBEAT_KEY}{shard}"

    def publish(self, tops: Sequence[BookTop]) -> None:
        """Store each top as its token's latest and append them to their shards' streams."""
        self.publish_json([(t.token_id, orjson.dumps(t)) for t in tops])

    def publish_json(
        self, items: Sequence[EncodedTop], trades: Sequence[EncodedTrade] = ()
    ) -> None:
        """`publish` for tops already encoded (`BookKeeper.drain_tops_json`), with the trade
        prints seen since the last publish (`BookKeeper.drain_trades_json`), which ride in
        their shard's stream entry: ONE pipeline, one round trip (MSET of the latest tops,
        then one XADD per shard touched)."""
        if not items and not trades:
            return
        latest, by_shard = self._by_shard(items)
        trades_by = _trades_by_shard(trades, self.n_shards) if trades else {}
        pipe = self.client.pipeline(transaction=False)
        if latest:
            pipe.execute_command("MSET", *latest)
        for shard in sorted(by_shard.keys() | trades_by.keys()):
            fields: dict[str, bytes] = {"tops": b"\n".join(by_shard.get(shard, ()))}
            if shard in trades_by:
                fields["trades"] = b"\n".join(trades_by[shard])
            pipe.xadd(
                f"{STREAM_KEY}{shard}",
                fields,  # type: ignore[arg-type]
                maxlen=self.maxlen,
                approximate=True,
            )
        pipe.execute()

    def latest(self, token_id: str) -> BookTop | None:
        blob = self.client.get(BOOK_KEY + token_id)
        return BookTop.from_json(blob) if blob is not None else None  # type: ignore[arg-type]

    def latest_many(self, token_ids: Iterable[str]) -> dict[str, BookTop]:
        """The latest top of each token that has one, as published, in ONE MGET."""
        ids = list(dict.fromkeys(token_ids))
        if not ids:
            return {}
        blobs = self.client.mget([BOOK_KEY + t for t in ids])
        return {
            t: BookTop.from_json(b)
            for t, b in zip(ids, blobs, strict=True)  # type: ignore[arg-type]
            if b is not None
        }

    def mark_stale(self, token_ids: Iterable[str]) -> list[BookTop]:
        """Republish the latest tops of these tokens with fresh=False (and stream them so the
        matcher stops). Tests and tools; the feed publishes its own books stale."""
        now = now_ms()
        stale = [
            t.with_fresh(False, published_at=now) for t in self.latest_many(token_ids).values()
        ]
        self.publish(stale)
        return stale

    def heartbeat(
        self, shard: int, *, at_ms: int | None = None, expect: int | None = None
    ) -> int | None:
        """The feed of `shard` is healthy and maintains its tokens' `fresh` flags; returns the
        beat written (epoch ms). `at_ms` (tests, tools) backdates it. `expect` (the feed: its
        last beat) writes only over that value, else writes nothing and returns None."""
        args = ["" if expect is None else str(expect), "" if at_ms is None else str(at_ms)]
        written = int(self._heartbeat_script(keys=[self.heartbeat_key(shard)], args=args))
        return written or None

    def heartbeat_age_ms(self, shard: int) -> int | None:
        """Milliseconds since the shard's last heartbeat on the server clock (None: never)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.heartbeat_key(shard))
        pipe.time()
        beat, now = pipe.execute()
        return None if beat is None else max(0, _time_ms(now) - int(beat))

    def latest_live(self, token_id: str) -> LiveTop:
        """The latest top as published and whether it may be acted on now, in ONE round trip
        (the engine's only read of a book)."""
        found = self._read_live([token_id], ())[0]
        if not found:
            return LiveTop(None, False)
        top, live = found[token_id]
        return LiveTop(top, live)

    def latest_many_live(self, token_ids: Iterable[str]) -> dict[str, BookTop]:
        """The latest tops, each one's `fresh` narrowed to "live", in ONE round trip: for
        displays that must not show a dead feed's books as healthy."""
        return self.latest_many_live_and_get(token_ids, [])[0]

    def latest_many_live_and_get(
        self, token_ids: Iterable[str], keys: Sequence[str]
    ) -> tuple[dict[str, BookTop], list[bytes | None]]:
        """`latest_many_live`, and the raw values of other `keys` of this Redis (None where
        unset), in the same ONE round trip: for a caller that needs both at one moment
        (the order placement: its positions' marks and its depletion memories)."""
        found, raws = self._read_live(list(dict.fromkeys(token_ids)), keys)
        return {
            token_id: top if live or not top.fresh else _not_fresh(top)
            for token_id, (top, live) in found.items()
        }, raws

    def _read_live(
        self, ids: list[str], keys: Sequence[str]
    ) -> tuple[dict[str, tuple[BookTop, bool]], list[bytes | None]]:
        """Every liveness answer comes from here: one pipeline of ONE MGET of the tops and
        their shards' heartbeats, `TIME` (the clock the beats were stamped with) and the MGET
        of any other `keys`; a top is live when `top_is_live` says so."""
        pipe = self.client.pipeline(transaction=False)
        shards = sorted({self.shard_of(t) for t in ids})
        if ids:
            pipe.mget([BOOK_KEY + t for t in ids] + [self.heartbeat_key(s) for s in shards])
            pipe.time()
        if keys:
            pipe.mget(list(keys))
        replies = pipe.execute() if ids or keys else []
        raws: list[bytes | None] = list(replies[-1]) if keys else []
        if not ids:
            return {}, raws
        values, now = replies[0], replies[1]
        blobs, beats = values[: len(ids)], values[len(ids) :]
        beat_of = dict(zip(shards, (_int_or_none(b) for b in beats), strict=True))
        now_ms_ = _time_ms(now)
        out: dict[str, tuple[BookTop, bool]] = {}
        for token_id, blob in zip(ids, blobs, strict=True):
            if blob is not None:
                top = BookTop.from_json(blob)
                beat = beat_of[self.shard_of(token_id)]
                out[token_id] = (top, top_is_live(top, beat, now_ms_, self.heartbeat_stale_ms))
        return out, raws

    def ensure_group(self, shard: int, group: str, *, start_id: str = "0") -> None:
        import redis

        try:
            self.client.xgroup_create(self.stream_key(shard), group, id=start_id, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @staticmethod
    def _messages(entries: Any, raw: bool = False) -> list[BusMessage]:
        out = []
        for entry_id, data in entries or ():
            blob = data.get(b"tops") if data else None
            trades = _decode_trades(data.get(b"trades") if data else None)
            if raw:
                out.append(BusMessage(_text(entry_id), [], trades, _split_tops(blob or b"")))
            else:
                out.append(BusMessage(_text(entry_id), _decode_tops(blob) if blob else [], trades))
        return out

    def read(
        self,
        shard: int,
        group: str,
        consumer: str,
        count: int = 100,
        block_ms: int | None = None,
        *,
        raw: bool = False,
    ) -> list[BusMessage]:
        reply: Any = self.client.xreadgroup(
            group, consumer, {self.stream_key(shard): ">"}, count=count, block=block_ms
        )
        if not reply:
            return []
        # RESP2: [[stream, entries]]; RESP3: {stream: [entries]}
        entries = next(iter(reply.values()))[0] if isinstance(reply, dict) else reply[0][1]
        return self._messages(entries, raw)

    def read_pending(
        self, shard: int, group: str, consumer: str, count: int = 100, *, raw: bool = False
    ) -> list[BusMessage]:
        reply: Any = self.client.xreadgroup(
            group, consumer, {self.stream_key(shard): "0"}, count=count
        )
        if not reply:
            return []
        entries = next(iter(reply.values()))[0] if isinstance(reply, dict) else reply[0][1]
        return self._messages(entries, raw)

    def claim_stale(
        self,
        shard: int,
        group: str,
        consumer: str,
        min_idle_ms: int,
        count: int = 100,
        *,
        raw: bool = False,
    ) -> list[BusMessage]:
        reply: Any = self.client.xautoclaim(
            self.stream_key(shard), group, consumer, min_idle_ms, start_id="0-0", count=count
        )
        return self._messages(reply[1], raw)

    def ack(self, shard: int, group: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        return int(self.client.xack(self.stream_key(shard), group, *ids))  # type: ignore[arg-type]

    def pending_count(self, shard: int, group: str) -> int:
        info: Any = self.client.xpending(self.stream_key(shard), group)
        return int(info["pending"])

    def stream_length(self, shard: int) -> int:
        return int(self.client.xlen(self.stream_key(shard)))  # type: ignore[arg-type]

    def record_trades(self, prints: Sequence[TradePrint]) -> None:
        if not prints:
            return
        pipe = self.client.pipeline(transaction=False)
        touched = set()
        for p in prints:
            pipe.lpush(TRADES_KEY + p.token_id, p.to_json())
            touched.add(p.token_id)
        for token_id in touched:
            pipe.ltrim(TRADES_KEY + token_id, 0, DEFAULT_TRADES_KEPT - 1)
        pipe.execute()

    def recent_trades_many(
        self, token_ids: Iterable[str], limit: int = DEFAULT_TRADES_KEPT
    ) -> dict[str, list[TradePrint]]:
        ids = list(token_ids)
        if not ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for token_id in ids:
            pipe.lrange(TRADES_KEY + token_id, 0, limit - 1)
        replies = pipe.execute()
        pairs = zip(ids, replies, strict=True)
        return {t: [TradePrint.from_json(b) for b in blobs] for t, blobs in pairs}


# --- the process-wide bus ---------------------------------------------------------------------

# The one type of price bus (kept as a name for type hints across the apps).
PriceBus = RedisBus

_bus_lock = threading.Lock()
_redis_buses: dict[tuple[str, int], RedisBus] = {}


def bus_from_settings(client_options: dict[str, Any] | None = None) -> RedisBus:
    """A new RedisBus on settings.REDIS_URL. `PRICE_BUS_SHARDS` (default 1) must be the same
    for the feed and the matchers; `PRICE_BUS_HEARTBEAT_STALE_SECONDS` (default 2) is the
    liveness threshold."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    url = getattr(settings, "REDIS_URL", "") or ""
    if not url:
        raise ImproperlyConfigured("REDIS_URL is not set: the price bus lives in Redis")
    return RedisBus.from_url(
        url,
        n_shards=_n_shards(settings),
        heartbeat_stale_ms=_stale_ms(settings),
        client_options=client_options,
    )


def _n_shards(settings: Any) -> int:
    return int(getattr(settings, "PRICE_BUS_SHARDS", 1) or 1)


def _stale_ms(settings: Any) -> int:
    seconds = getattr(settings, "PRICE_BUS_HEARTBEAT_STALE_SECONDS", None)
    return DEFAULT_HEARTBEAT_STALE_MS if seconds is None else int(float(seconds) * 1000)


def get_bus() -> RedisBus:
    """The process's RedisBus for settings.REDIS_URL (one per URL and shard count; the
    heartbeat threshold is re-read on every call)."""
    from django.conf import settings

    key = (getattr(settings, "REDIS_URL", "") or "", _n_shards(settings))
    with _bus_lock:
        bus = _redis_buses.get(key)
        if bus is None:
            bus = _redis_buses[key] = bus_from_settings()
        bus.heartbeat_stale_ms = _stale_ms(settings)
        return bus


def reset_bus() -> None:
    """Forget the process-wide buses (tests)."""
    with _bus_lock:
        _redis_buses.clear()


def latest_many_live(bus: RedisBus, token_ids: Iterable[str]) -> dict[str, BookTop]:
    """`bus.latest_many_live(token_ids)` (the name the apps import)."""
    return bus.latest_many_live(token_ids)
