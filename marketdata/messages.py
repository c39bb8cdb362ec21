"""Market-channel websocket frames -> validated events -> local books.

Three layers, each usable alone:

* `parse_frame(raw)`: one websocket text frame -> list of JSON objects. A frame holds one
  object or an array of them; the text `PONG` and anything else that is not JSON yields [].
* `normalise(obj)`: one object -> a typed event (TypedDicts below) or None. Unknown event
  types, the legacy pre-2025-09 `price_change` shape and malformed events are counted and
  dropped; inside a `price_change`, each malformed entry (missing field, bad side, price not
  a plain decimal in (0, 1], size not a plain decimal >= 0: negative, "abc", NaN, ...) is
  counted and dropped on its own while the valid entries go through.
* `BookKeeper`: owns the `OrderBook`s of the tracked tokens and applies events, checks the
  book hash, tracks resync needs and builds `BookTop`s for the price bus.

Nothing here raises on feed input: bad input is counted in `FeedStats` and logged at WARNING,
at most once per reason per `LOG_EVERY_S` seconds (a broken feed can send 50k bad entries a
second). Pure Python, no Django.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypedDict

import orjson

from marketdata.book import (
    _PRICE_VALUES,
    BUY,
    SELL,
    OrderBook,
    is_valid_size,
    parse_price,
)
from marketdata.bus import (
    DEFAULT_DEPTH,
    BookTop,
    EncodedTop,
    EncodedTrade,
    TradePrint,
    encode_tops,
    now_ms,
    timestamp_ms,
)

logger = logging.getLogger("polysim.marketdata")

LOG_EVERY_S: Final = 10.0
MAX_UNDRAINED_TRADES: Final = 1_000  # BookKeeper.drain_trades_json backlog bound


# --- events -----------------------------------------------------------------------------------

# One price_change entry, validated: (asset_id, is_bid, price, size, hash or None).
# A plain tuple, not a NamedTuple: it is built once per entry at feed rate.
Change = tuple[str, bool, str, str, str | None]


class BookEvent(TypedDict):
    """`book`: the raw snapshot message (levels are validated when applied)."""

    event_type: Literal["book"]
    market: str
    asset_id: str
    timestamp: str
    hash: str
    bids: list[dict[str, Any]]
    asks: list[dict[str, Any]]
    tick_size: str | None  # only on the subscription snapshot
    last_trade_price: str | None  # only on the subscription snapshot


class PriceChangeEvent(TypedDict):
    event_type: Literal["price_change"]
    market: str
    timestamp: str
    changes: list[Change]


class TickSizeChangeEvent(TypedDict):
    event_type: Literal["tick_size_change"]
    market: str
    asset_id: str
    old_tick_size: str | None
    new_tick_size: str
    timestamp: str


class LastTradePriceEvent(TypedDict):
    event_type: Literal["last_trade_price"]
    market: str
    asset_id: str
    price: str
    side: str | None  # the taker's side
    size: str
    fee_rate_bps: str | None
    timestamp: str
    transaction_hash: str | None  # absent on older captures


class BestBidAskEvent(TypedDict):
    event_type: Literal["best_bid_ask"]
    market: str
    asset_id: str
    best_bid: str | None
    best_ask: str | None
    spread: str | None
    timestamp: str


class NewMarketEvent(TypedDict):
    event_type: Literal["new_market"]
    id: str | None
    market: str
    question: str | None
    slug: str | None
    asset_ids: list[str]
    outcomes: list[str]
    tick_size: str | None  # order_price_min_tick_size
    timestamp: str
    raw: dict[str, Any]  # every other field, as received


class MarketResolvedEvent(TypedDict):
    event_type: Literal["market_resolved"]
    id: str | None
    market: str
    asset_ids: list[str]
    winning_asset_id: str
    winning_outcome: str | None
    timestamp: str


MarketEvent = (
    BookEvent
    | PriceChangeEvent
    | TickSizeChangeEvent
    | LastTradePriceEvent
    | BestBidAskEvent
    | NewMarketEvent
    | MarketResolvedEvent
)

KNOWN_EVENT_TYPES: Final = frozenset(
    {
        "book",
        "price_change",
        "tick_size_change",
        "last_trade_price",
        "best_bid_ask",
        "new_market",
        "market_resolved",
    }
)


# --- counters and rate-limited logging --------------------------------------------------------


@dataclass
class FeedStats:
    """Counters for one feed process (plain ints: read them, diff them, export them)."""

    frames: int = 0
    non_json_frames: int = 0  # PONG and other non-JSON text
    events: dict[str, int] = field(default_factory=dict)  # by event_type, unknown included
    entries_applied: int = 0  # price_change entries applied to a book
    entries_untracked: int = 0  # valid entries for tokens this keeper does not track
    entries_skipped_resync: int = 0  # valid entries for a token waiting for a snapshot
    snapshots_applied: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # by reason
    hash_checked: int = 0
    hash_matched: int = 0  # includes hash_ltp_inferred
    hash_ltp_inferred: int = 0  # matched once the trade's price was taken as last trade price
    hash_deferred: int = 0  # mismatch on a crossed book inside a trade burst: tolerated
    hash_mismatched: int = 0  # real mismatch: the token now needs a resync
    _last_log: dict[str, float] = field(default_factory=dict, repr=False)
    _suppressed: dict[str, int] = field(default_factory=dict, repr=False)

    def reject(self, reason: str, detail: object = None) -> None:
        """Count a rejected frame/event/entry and log it, rate-limited per reason."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        now = time.monotonic()
        last = self._last_log.get(reason)
        if last is not None and now - last < LOG_EVERY_S:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        self._last_log[reason] = now
        suppressed = self._suppressed.pop(reason, 0)
        logger.warning(
            "market feed: rejected (%s): %.200r%s",
            reason,
            detail,
            f" [+{suppressed} more since the last log]" if suppressed else "",
        )

    def total_rejected(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


def _count_event(stats: FeedStats, event_type: str) -> None:
    stats.events[event_type] = stats.events.get(event_type, 0) + 1


# --- parsing ----------------------------------------------------------------------------------


def parse_frame(raw: str | bytes, stats: FeedStats | None = None) -> list[dict[str, Any]]:
    """One websocket text frame -> its JSON objects (a single object or an array of them).

    `PONG` and any other non-JSON text yield []; non-object array items are dropped and
    counted. Never raises.
    """
    if stats is not None:
        stats.frames += 1
    try:
        data = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        if stats is not None:
            _not_json(raw, stats)
        return []
    return _objects(data, stats)


def _not_json(raw: object, stats: FeedStats) -> None:
    text = raw.strip() if isinstance(raw, str | bytes) else raw
    if text in ("PONG", b"PONG", "PING", b"PING"):
        stats.non_json_frames += 1  # the keepalive answer: expected, not an error
    else:
        stats.reject("malformed_json", raw[:120] if isinstance(raw, str | bytes) else raw)


def _objects(data: object, stats: FeedStats | None) -> list[dict[str, Any]]:
    if type(data) is dict:
        return [data]
    if type(data) is list:
        objs = [item for item in data if type(item) is dict]
        if len(objs) != len(data) and stats is not None:
            stats.reject("non_object_item", data)
        return objs
    if stats is not None:
        stats.reject("non_object_frame", data)
    return []


def normalise(obj: Mapping[str, Any], stats: FeedStats | None = None) -> MarketEvent | None:
    """One parsed object -> a validated, typed event, or None (counted, logged) if unusable."""
    st = stats if stats is not None else FeedStats()
    event_type = obj.get("event_type")
    if type(event_type) is not str:
        _count_event(st, "<missing>")
        st.reject("missing_event_type", obj)
        return None
    events = st.events
    events[event_type] = events.get(event_type, 0) + 1
    if event_type == "price_change":
        return _normalise_price_change(obj, st)
    handler = _HANDLERS.get(event_type)
    if handler is None:
        st.reject("unknown_event_type", event_type)
        return None
    try:
        return handler(obj, st)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        st.reject(f"malformed_{event_type}", exc)
        return None


def parse_events(raw: str | bytes, stats: FeedStats | None = None) -> list[MarketEvent]:
    """parse_frame + normalise: the valid events of one frame."""
    st = stats if stats is not None else FeedStats()
    events = []
    for obj in parse_frame(raw, st):
        event = normalise(obj, st)
        if event is not None:
            events.append(event)
    return events


def _normalise_price_change(obj: Mapping[str, Any], st: FeedStats) -> PriceChangeEvent | None:
    raw_changes = obj.get("price_changes")
    if type(raw_changes) is not list:
        if "changes" in obj or "asset_id" in obj:
            # Pre-2025-09-15 shape: one asset_id at the top level (+ changes[] or a single
            # price/side/size). Obsolete: Polymarket no longer sends it; never guess at it.
            st.reject("legacy_price_change", obj.get("asset_id"))
        else:
            st.reject("malformed_price_change", obj)
        return None
    timestamp = obj.get("timestamp")
    if type(timestamp) is not str or not timestamp:
        st.reject("missing_timestamp", obj)
        return None
    market = obj.get("market")
    prices = _PRICE_VALUES
    changes: list[Change] = []
    append = changes.append
    for entry in raw_changes:
        # Hot loop (every entry of the feed): inline checks, no per-entry function calls on
        # the happy path. Unhashable or non-dict input lands in the except clause.
        try:
            asset_id = entry["asset_id"]
            price = entry["price"]
            size = entry["size"]
            side = entry["side"]
            if type(asset_id) is not str or not asset_id:
                st.reject("bad_asset_id", entry)
                continue
            if side == "BUY":
                is_bid = True
            elif side == "SELL":
                is_bid = False
            else:
                st.reject("bad_side", entry)
                continue
            if price not in prices and parse_price(price) is None:
                st.reject("bad_price", entry)
                continue
            if not (type(size) is str and size.isascii() and size.replace(".", "", 1).isdigit()):
                st.reject("bad_size", entry)
                continue
            entry_hash = entry.get("hash")
        except (KeyError, TypeError, AttributeError):
            st.reject("malformed_entry", entry)
            continue
        append((asset_id, is_bid, price, size, entry_hash if type(entry_hash) is str else None))
    return {
        "event_type": "price_change",
        "market": market if type(market) is str else "",
        "timestamp": timestamp,
        "changes": changes,
    }


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj[key]
    if type(value) is not str or not value:
        raise ValueError(f"{key} must be a non-empty string")
    return value


def _opt_str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if type(value) is str else None


def _price(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if parse_price(value) is None:
        raise ValueError(f"{key} is not a price: {value!r}")
    assert isinstance(value, str)
    return value


def _opt_price(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    return _price(obj, key)


def _str_list(obj: Mapping[str, Any], *keys: str) -> list[str]:
    for key in keys:
        value = obj.get(key)
        if value is not None:
            if not isinstance(value, list) or not all(type(v) is str for v in value):
                raise ValueError(f"{key} must be a list of strings")
            return value
    return []


def _book(obj: Mapping[str, Any], st: FeedStats) -> BookEvent:
    bids, asks = obj.get("bids"), obj.get("asks")
    if not isinstance(bids, list) or not isinstance(asks, list):
        raise ValueError("book without bids/asks lists")
    return {
        "event_type": "book",
        "market": _str(obj, "market"),
        "asset_id": _str(obj, "asset_id"),
        "timestamp": _str(obj, "timestamp"),
        "hash": _opt_str(obj, "hash") or "",
        "bids": bids,
        "asks": asks,
        "tick_size": _opt_price(obj, "tick_size"),
        "last_trade_price": _opt_str(obj, "last_trade_price"),
    }


def _tick_size_change(obj: Mapping[str, Any], st: FeedStats) -> TickSizeChangeEvent:
    return {
        "event_type": "tick_size_change",
        "market": _opt_str(obj, "market") or "",
        "asset_id": _str(obj, "asset_id"),
        "old_tick_size": _opt_price(obj, "old_tick_size"),
        "new_tick_size": _price(obj, "new_tick_size"),
        "timestamp": _str(obj, "timestamp"),
    }


def _last_trade_price(obj: Mapping[str, Any], st: FeedStats) -> LastTradePriceEvent:
    size = obj.get("size")
    if not is_valid_size(size):
        raise ValueError(f"size is not a size: {size!r}")
    assert isinstance(size, str)
    side = obj.get("side")
    if side not in (BUY, SELL, None):
        raise ValueError(f"bad side {side!r}")
    return {
        "event_type": "last_trade_price",
        "market": _opt_str(obj, "market") or "",
        "asset_id": _str(obj, "asset_id"),
        "price": _price(obj, "price"),
        "side": side,
        "size": size,
        "fee_rate_bps": _opt_str(obj, "fee_rate_bps"),
        "timestamp": _str(obj, "timestamp"),
        "transaction_hash": _opt_str(obj, "transaction_hash"),
    }


def _best_bid_ask(obj: Mapping[str, Any], st: FeedStats) -> BestBidAskEvent:
    spread = obj.get("spread")
    if spread is not None and not is_valid_size(spread):
        raise ValueError(f"spread is not a decimal: {spread!r}")
    return {
        "event_type": "best_bid_ask",
        "market": _opt_str(obj, "market") or "",
        "asset_id": _str(obj, "asset_id"),
        "best_bid": _opt_price(obj, "best_bid"),
        "best_ask": _opt_price(obj, "best_ask"),
        "spread": spread,
        "timestamp": _str(obj, "timestamp"),
    }


def _loose_price(value: object) -> str | None:
    """A price that may arrive as a JSON number on discovery events (0.01 -> "0.01")."""
    if type(value) is float or type(value) is int:
        value = repr(value)
    return value if type(value) is str and parse_price(value) is not None else None


_NEW_MARKET_KEYS: Final = frozenset(
    {"event_type", "id", "market", "question", "slug", "assets_ids", "outcomes", "timestamp"}
)


def _new_market(obj: Mapping[str, Any], st: FeedStats) -> NewMarketEvent:
    market = _opt_str(obj, "market") or _str(obj, "condition_id")
    ident = obj.get("id")
    return {
        "event_type": "new_market",
        "id": str(ident) if ident is not None else None,
        "market": market,
        "question": _opt_str(obj, "question"),
        "slug": _opt_str(obj, "slug"),
        "asset_ids": _str_list(obj, "assets_ids", "asset_ids", "clob_token_ids", "token_ids"),
        "outcomes": _str_list(obj, "outcomes"),
        "tick_size": _loose_price(obj.get("order_price_min_tick_size")),
        "timestamp": _str(obj, "timestamp"),
        "raw": {k: v for k, v in obj.items() if k not in _NEW_MARKET_KEYS},
    }


def _market_resolved(obj: Mapping[str, Any], st: FeedStats) -> MarketResolvedEvent:
    winner = _opt_str(obj, "winning_asset_id") or _opt_str(obj, "winning_token_id")
    if not winner:
        raise ValueError("market_resolved without winning_asset_id/winning_token_id")
    ident = obj.get("id")
    return {
        "event_type": "market_resolved",
        "id": str(ident) if ident is not None else None,
        "market": _str(obj, "market"),
        "asset_ids": _str_list(obj, "assets_ids", "asset_ids", "token_ids"),
        "winning_asset_id": winner,
        "winning_outcome": _opt_str(obj, "winning_outcome"),
        "timestamp": _str(obj, "timestamp"),
    }


_HANDLERS: Final[dict[str, Any]] = {
    "book": _book,
    "tick_size_change": _tick_size_change,
    "last_trade_price": _last_trade_price,
    "best_bid_ask": _best_bid_ask,
    "new_market": _new_market,
    "market_resolved": _market_resolved,
}


# --- the book keeper --------------------------------------------------------------------------


# The ingester's publishing defaults (IngestConfig; MARKETDATA_FLUSH_MS, MARKETDATA_HASH_CHECK_MS),
# kept here so that Django-free tools (bench/feed.py) measure the production policy.
DEFAULT_FLUSH_MS: Final = 5
DEFAULT_HASH_CHECK_MS: Final = 1000

HashCheck = Literal["match", "inferred", "deferred", "mismatch"]
VerifyMode = Literal["entry", "flush", "off"]


def _trade_json(asset_id: str, trade: LastTrade) -> bytes:
    ts = trade.timestamp
    return TradePrint(
        asset_id,
        trade.price,
        trade.size,
        trade.side,
        timestamp_ms(ts),
        now_ms(),
        trade.fee_rate_bps,
    ).to_json()


@dataclass(frozen=True, slots=True)
class LastTrade:
    price: str
    side: str | None  # the taker's side
    size: str
    timestamp: str
    fee_rate_bps: str | None = None


@dataclass(slots=True)
class _TokenMeta:
    """What the keeper knows about a tracked token apart from its book."""

    market: str
    min_order_size: str
    neg_risk: bool
    tick_size: str | None
    last_trade: LastTrade | None = None
    resync_reason: str | None = "no snapshot yet"
    burst_ts: str | None = None  # set while a mismatch is deferred inside a trade burst
    verified_at: float = float("-inf")  # monotonic seconds of the last flush-mode check


class BookKeeper:
    """Owns the local books of the tracked tokens and applies feed events to them.

    * Entries for untracked tokens are ignored (a message usually carries both tokens of a
      market; we may track one). Each entry only ever touches its own token's book.
    * A token needs a snapshot (WS `book`, or REST `/book` via `install_snapshot`) before any
      delta is applied; after a hash mismatch it needs one again (`needs_resync`), and its
      deltas are skipped until then. `resync_wanted()` lists the tokens to fetch.
    * Hash check (`verify`):
        - "entry": every entry carrying a hash is checked against the book right after it.
        - "flush" (default, for the live feed): each entry's hash is kept as the book's
          claimed hash, and the LAST claim of each token is checked when tops are built
          (`drain_tops*`), at most once per `verify_interval_ms` per token. The hash covers
          the whole book, so one check proves the book right at that point, at one SHA-1
          per token per flush instead of per entry; a missed delta is caught at the next
          check, and the token is then published as not fresh.
        - "off": no checks.
      Trade bursts: while a taker crosses the book, Polymarket sends several price_change
      messages with the same timestamp whose first entries already carry the post-trade
      hash, and the rebuilt book is crossed for a moment. A mismatch on a CROSSED book is
      therefore deferred, not an error, as long as the burst's timestamp does not change;
      the burst's last entry (or the `book` that follows) proves the book again. A mismatch
      on an uncrossed book, or a second one after the timestamp moved on, is a real one.
      While a mismatch is deferred the book is unproven: it is published not fresh (no taker
      or maker fill may use a crossed, unverified book), and if nothing proves it within
      `burst_grace_ms` (the burst's last entry never came) it is a real mismatch: held and
      resynced like any other.
      The exchange moves its last trade price at the trade, before the `last_trade_price`
      event reaches us: when the hash matches only with last_trade_price = the entry's own
      price or the new best bid/ask, that price is adopted (a SHA-1 match proves it).
    * `feed(raw)` is the websocket's entry point: `parse_frame` + `normalise` + `apply`, the
      one path every frame takes (docs/benchmarks.md, "Market data feed", for its cost).
    """

    def __init__(
        self,
        *,
        stats: FeedStats | None = None,
        verify: VerifyMode = "flush",
        verify_interval_ms: int = 0,
        burst_grace_ms: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if verify not in ("entry", "flush", "off"):
            raise ValueError(f"verify must be entry, flush or off, not {verify!r}")
        self.stats = stats if stats is not None else FeedStats()
        self.verify: VerifyMode = verify
        self.verify_interval_s = verify_interval_ms / 1000
        self.burst_grace_s = burst_grace_ms / 1000
        # token -> monotonic deadline of its deferred (in-burst) mismatch; see the docstring
        self._bursts: dict[str, float] = {}
        self._clock = clock  # seconds, for verify_interval_ms (a benchmark runs its own)
        self._next_sweep = float("-inf")  # verify_pending: next walk over the claims
        self._meta: dict[str, _TokenMeta] = {}
        self._books: dict[str, OrderBook] = {}  # every token that ever had a valid snapshot
        self._live: dict[str, OrderBook] = {}  # the in-sync ones: deltas are applied to these
        # flush mode: token -> price of its last hash-carrying entry, whose hash (book.hash)
        # and timestamp (book.timestamp) are not checked yet.
        self._claims: dict[str, str] = {}
        self._dirty: set[str] = set()  # touched since the last drain
        self.last_hash_result: dict[str, HashCheck] = {}  # token -> outcome of its last check
        self._trades: list[EncodedTrade] = []  # trade prints since the last drain_trades_json

    # --- tracking ---------------------------------------------------------------------------

    def track(
        self,
        token_id: str,
        *,
        market: str = "",
        min_order_size: str = "5",
        neg_risk: bool = False,
        tick_size: str | None = None,
    ) -> None:
        """Start tracking a token. `min_order_size`/`neg_risk` come from the market (they are
        part of the book hash but not on the WS wire). Deltas wait for a first snapshot."""
        meta = self._meta.get(token_id)
        if meta is None:
            self._meta[token_id] = _TokenMeta(market, min_order_size, neg_risk, tick_size)
            return
        meta.market = market or meta.market
        meta.min_order_size, meta.neg_risk = min_order_size, neg_risk
        meta.tick_size = tick_size or meta.tick_size
        book = self._books.get(token_id)
        if book is not None:
            book.min_order_size, book.neg_risk = min_order_size, neg_risk
            if tick_size:
                book.tick_size = tick_size

    def untrack(self, token_id: str) -> None:
        self._meta.pop(token_id, None)
        self._books.pop(token_id, None)
        self._live.pop(token_id, None)
        self._claims.pop(token_id, None)
        self._bursts.pop(token_id, None)
        self._dirty.discard(token_id)

    def tracked(self) -> set[str]:
        return set(self._meta)

    def book(self, token_id: str) -> OrderBook | None:
        """The local book (possibly out of sync: see `needs_resync`). Read-only: change it
        through events, never directly (it caches its JSON per side)."""
        return self._books.get(token_id)

    def last_trade(self, token_id: str) -> LastTrade | None:
        meta = self._meta.get(token_id)
        return meta.last_trade if meta else None

    def needs_resync(self, token_id: str) -> bool:
        return token_id in self._meta and token_id not in self._live

    def resync_reason(self, token_id: str) -> str | None:
        meta = self._meta.get(token_id)
        return meta.resync_reason if meta else None

    def resync_wanted(self) -> set[str]:
        """Tracked tokens whose deltas are on hold until a snapshot arrives."""
        return {t for t in self._meta if t not in self._live}

    def require_resync(self, token_ids: Iterable[str], reason: str = "resubscribe") -> None:
        """Put tokens on hold until their next snapshot (e.g. the socket dropped)."""
        for token_id in token_ids:
            meta = self._meta.get(token_id)
            if meta is not None:
                self._hold(token_id, meta, reason)

    def _hold(self, token_id: str, meta: _TokenMeta, reason: str) -> None:
        meta.resync_reason = reason
        meta.burst_ts = None
        self._bursts.pop(token_id, None)
        self._live.pop(token_id, None)
        self._claims.pop(token_id, None)
        self._dirty.add(token_id)  # publish it as not fresh

    def touch_all(self) -> None:
        """Every book is published again at the next drain (after Redis lost or replaced what
        we wrote: marketdata/ingest.py)."""
        self._dirty.update(self._books)

    def _take_dirty(self) -> set[str]:
        dirty, self._dirty = self._dirty, set()
        return dirty

    # --- applying events --------------------------------------------------------------------

    def feed(self, raw: str | bytes) -> None:
        """One websocket frame: parse_frame + normalise + apply (the one path; nothing here
        raises on feed input)."""
        for obj in parse_frame(raw, self.stats):
            event = normalise(obj, self.stats)
            if event is not None:
                self.apply(event)

    def apply(self, event: MarketEvent) -> set[str]:
        """Apply one normalised event; returns the tracked tokens whose state changed."""
        if event["event_type"] == "price_change":
            return self._apply_price_change(event)
        if event["event_type"] == "book":
            return self._apply_book(event)
        if event["event_type"] == "tick_size_change":
            return self._apply_tick_size(event)
        if event["event_type"] == "last_trade_price":
            return self._apply_last_trade(event)
        # best_bid_ask is derived from the book we keep; new_market and market_resolved are
        # for discovery and resolution, which read them from the event stream themselves.
        return set()

    def install_snapshot(self, msg: Mapping[str, Any]) -> bool:
        """Install a REST `/book` response (or any full snapshot); True if the book is in sync
        afterwards. REST books carry every hashed field, so the hash must match."""
        asset_id = msg.get("asset_id")
        if type(asset_id) is not str or asset_id not in self._meta:
            self.stats.reject("snapshot_for_untracked_token", asset_id)
            return False
        self._snapshot(asset_id, msg)
        return asset_id in self._live

    def _apply_price_change(self, event: PriceChangeEvent) -> set[str]:
        live, claims, stats = self._live, self._claims, self.stats
        ts = event["timestamp"]
        touched: set[str] = set()
        record = self.verify == "flush"
        entry_mode = self.verify == "entry"
        applied = 0
        for asset_id, is_bid, price, size, entry_hash in event["changes"]:
            book = live.get(asset_id)
            if book is None:
                if asset_id in self._meta:
                    stats.entries_skipped_resync += 1
                else:
                    stats.entries_untracked += 1
                continue
            book._set_level(is_bid, price, size)
            book.timestamp = ts
            applied += 1
            touched.add(asset_id)
            if entry_hash is not None:
                book.hash = entry_hash
                if record:
                    claims[asset_id] = price
                elif entry_mode:
                    self._verify(asset_id, book, entry_hash, ts, price)
            else:
                book.hash = ""
                if record:
                    claims.pop(asset_id, None)
        stats.entries_applied += applied
        self._dirty |= touched
        return touched

    def _apply_book(self, event: BookEvent) -> set[str]:
        asset_id = event["asset_id"]
        if asset_id not in self._meta:
            self.stats.entries_untracked += 1
            return set()
        self._snapshot(asset_id, event)
        return {asset_id}

    def _snapshot(self, asset_id: str, msg: Mapping[str, Any]) -> None:
        meta = self._meta[asset_id]
        claimed_price = self._claims.pop(asset_id, None)
        book = self._books.get(asset_id)
        try:
            if book is None:
                book = OrderBook.from_snapshot(
                    msg,
                    min_order_size=meta.min_order_size,
                    neg_risk=meta.neg_risk,
                    tick_size=meta.tick_size,
                )
                if not book.last_trade_price and meta.last_trade is not None:
                    book.last_trade_price = meta.last_trade.price
                self._books[asset_id] = book
            else:
                book.replace_from_snapshot(msg)
        except ValueError as exc:
            self.stats.reject("bad_book", exc)
            self._hold(asset_id, meta, "invalid snapshot")
            return
        self.stats.snapshots_applied += 1
        if not meta.market:
            meta.market = book.market
        meta.tick_size = book.tick_size
        meta.min_order_size, meta.neg_risk = book.min_order_size, book.neg_risk
        meta.resync_reason = None
        meta.burst_ts = None
        self._bursts.pop(asset_id, None)
        self._live[asset_id] = book
        self._dirty.add(asset_id)
        if self.verify != "off" and book.hash:
            extra = (claimed_price,) if claimed_price else ()
            meta.verified_at = self._clock()  # counts as the token's check for the interval
            self._verify(asset_id, book, book.hash, book.timestamp, None, extra)

    def _apply_tick_size(self, event: TickSizeChangeEvent) -> set[str]:
        asset_id = event["asset_id"]
        meta = self._meta.get(asset_id)
        if meta is None:
            return set()
        self._verify_claim(asset_id)  # the pending claim was made under the old tick
        meta.tick_size = event["new_tick_size"]
        book = self._books.get(asset_id)
        if book is not None:
            book.tick_size = event["new_tick_size"]
        self._dirty.add(asset_id)
        return {asset_id}

    def _apply_last_trade(self, event: LastTradePriceEvent) -> set[str]:
        asset_id = event["asset_id"]
        meta = self._meta.get(asset_id)
        if meta is None:
            return set()
        price = event["price"]
        self._verify_claim(asset_id, (price,))  # made before this trade price was known
        meta.last_trade = LastTrade(
            price, event["side"], event["size"], event["timestamp"], event["fee_rate_bps"]
        )
        self._trades.append((asset_id, _trade_json(asset_id, meta.last_trade)))
        if len(self._trades) > MAX_UNDRAINED_TRADES:  # nobody drains (tools, tests): stay bounded
            del self._trades[: len(self._trades) - MAX_UNDRAINED_TRADES]
        book = self._books.get(asset_id)
        if book is not None:
            book.last_trade_price = price
        self._dirty.add(asset_id)
        return {asset_id}

    # --- hash checks ------------------------------------------------------------------------

    def verify_pending(self, *, force: bool = False) -> None:
        """Check the pending (flush-mode) hash claims whose token was not checked within
        `verify_interval_ms` (all of them with force=True); then hold the tokens whose
        in-burst mismatch nothing proved within `burst_grace_ms`."""
        if self._claims:
            self._sweep_claims(force)
        if self._bursts:
            self._expire_bursts()

    def _sweep_claims(self, force: bool) -> None:
        now = self._clock()
        if not force:
            if now < self._next_sweep:
                return
            # Swept at most 8 times per interval: a claim waits at most interval/8 past its
            # due time, and a flush does not walk every token's claim each time.
            self._next_sweep = now + self.verify_interval_s / 8
        due = math.inf if force else now - self.verify_interval_s
        meta = self._meta
        due_claims = [t for t in self._claims if meta[t].verified_at <= due]
        for asset_id in due_claims:
            self._verify_claim(asset_id)

    def next_deadline(self) -> float | None:
        """The monotonic time by which `verify_pending` must run again (a deferred mismatch
        expires then), or None: the feed loop wakes for it even when no frame arrives."""
        return min(self._bursts.values(), default=None)

    def _expire_bursts(self) -> None:
        now = time.monotonic()
        for asset_id, deadline in list(self._bursts.items()):
            if deadline > now:
                continue
            meta = self._meta[asset_id]
            self.stats.hash_mismatched += 1
            self.stats.reject(
                "hash_mismatch",
                f"{asset_id[:16]}… ts={meta.burst_ts}: trade-burst mismatch not proven "
                f"within {self.burst_grace_s * 1000:.0f} ms",
            )
            self._hold(asset_id, meta, "hash mismatch")

    def _verify_claim(self, asset_id: str, extra: tuple[str, ...] = ()) -> None:
        price = self._claims.pop(asset_id, None)
        book = self._live.get(asset_id)
        if price is not None and book is not None:
            self._meta[asset_id].verified_at = self._clock()
            self._verify(asset_id, book, book.hash, book.timestamp, price, extra)

    def _verify(
        self,
        asset_id: str,
        book: OrderBook,
        expected: str,
        ts: str,
        price: str | None,
        extra: tuple[str, ...] = (),
    ) -> HashCheck:
        stats = self.stats
        stats.hash_checked += 1
        meta = self._meta[asset_id]
        result: HashCheck
        if book.compute_hash(timestamp=ts) == expected:
            result = "match"
        else:
            result = "mismatch"
            candidates = dict.fromkeys(
                c
                for c in (price, *extra, book.best_ask_str(), book.best_bid_str())
                if c and c != book.last_trade_price
            )
            for ltp in candidates:
                if book.compute_hash(timestamp=ts, last_trade_price=ltp) == expected:
                    book.last_trade_price = ltp
                    stats.hash_ltp_inferred += 1
                    result = "inferred"
                    break
        if result != "mismatch":
            stats.hash_matched += 1
            meta.burst_ts = None
            if self._bursts.pop(asset_id, None) is not None:
                self._dirty.add(asset_id)  # proven again: publish it fresh
        elif book.is_crossed() and meta.burst_ts in (None, ts):
            result = "deferred"
            stats.hash_deferred += 1
            meta.burst_ts = ts
            self._bursts.setdefault(asset_id, time.monotonic() + self.burst_grace_s)
            self._dirty.add(asset_id)  # publish it not fresh while unproven
        else:
            stats.hash_mismatched += 1
            stats.reject("hash_mismatch", f"{asset_id[:16]}… ts={ts} expected {expected}")
            self._hold(asset_id, meta, "hash mismatch")
        self.last_hash_result[asset_id] = result
        return result

    # --- output -----------------------------------------------------------------------------

    def top(self, token_id: str, depth: int = DEFAULT_DEPTH) -> BookTop | None:
        """The token's current top (None before its first valid snapshot)."""
        book = self._books.get(token_id)
        if book is None:
            return None
        last = self._meta[token_id].last_trade
        return BookTop.from_book(
            book,
            fresh=token_id in self._live and token_id not in self._bursts,
            last_trade_side=last.side if last else None,
            depth=depth,
        )

    def drain_tops(self, depth: int = DEFAULT_DEPTH) -> list[BookTop]:
        """Check the due hash claims, then the tops of every token touched since the last
        drain (for `PriceBus.publish`). Tokens without any valid snapshot are skipped."""
        self.verify_pending()
        return [top for top in (self.top(t, depth) for t in self._take_dirty()) if top is not None]

    def drain_trades_json(self) -> list[EncodedTrade]:
        """The trade prints applied since the last call, in feed order, encoded for
        `PriceBus.publish_json(..., trades=...)` (the maker matcher's trade-through rule)."""
        trades, self._trades = self._trades, []
        return trades

    def drain_tops_json(self, depth: int = DEFAULT_DEPTH) -> list[EncodedTop]:
        """`drain_tops`, already encoded for `PriceBus.publish_json` (the feed's hot path)."""
        self.verify_pending()
        dirty, published_at = self._take_dirty(), now_ms()
        books, meta = self._books, self._meta
        live: Container[str] = self._live
        if self._bursts:  # books in an unproven trade burst are published not fresh
            live = {t: b for t, b in self._live.items() if t not in self._bursts}
        tokens: list[str] = []
        items: list[tuple[OrderBook, bool, str | None]] = []
        for token_id in dirty:
            book = books.get(token_id)
            if book is not None:
                last = meta[token_id].last_trade
                tokens.append(token_id)
                items.append((book, token_id in live, last.side if last else None))
        blobs = encode_tops(items, depth=depth, published_at=published_at)
        return list(zip(tokens, blobs, strict=True))
