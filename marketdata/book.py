"""Local L2 order book for one Polymarket token, exactly as the exchange sends it.

Prices and sizes are kept as the exact strings received (the book hash is computed over
them, see `compute_hash`); the sorted price lists make the best price O(1) and a level
insert/delete O(log n + n) with n the number of levels on that side (<= a few hundred).
Decimals are produced on demand for trading math; nothing here ever uses float.

Pure Python, no Django: importable and fast without the ORM.

Level versions (docs/fill-model.md, "Depletion"): every level carries a version, a number
that changes whenever the feed sets that level (a `price_change` entry, even one that
restates the same size, or a snapshot that adds it or changes its size; a snapshot that
shows a level unchanged keeps its version). The price bus publishes them beside the levels,
and the depletion memory of simulated takes belongs to one version of a level. Versions come
from one process-wide counter seeded from the clock in microseconds: a restarted feed starts
above every version it issued before (it sets far fewer than a million levels a second).

Wire order (reference §0.3, verified on real captures): both REST `/book` and WS `book` list
bids ascending and asks descending, so the best price comes LAST. `to_wire()` emits that
order; `levels()` returns best-first for the engine.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, Final, Literal

import orjson

BUY: Final = "BUY"  # a bid level
SELL: Final = "SELL"  # an ask level
BookSide = Literal["BUY", "SELL"]

ONE: Final = Decimal(1)
TWO: Final = Decimal(2)

# The next level version (module docstring, "Level versions"), as the ASCII digits the bus
# publishes (JSON integers): the book never computes with a version, it only publishes it,
# and a side's versions then join into JSON without a Python-level loop.
_next_version = map(b"%d".__mod__, itertools.count(time.time_ns() // 1000)).__next__

# Every price string that ever entered a book, with its exact value. The sorted level lists
# compare through it (bisect key), so every price stored in a book MUST be in here; only
# validated prices are ever added. Polymarket prices are tick-aligned in (0, 1], so the table
# stays small (10,000 prices at the finest 0.0001 tick, times a few spellings).
_PRICE_VALUES: dict[str, Decimal] = {}
_price_value = _PRICE_VALUES.__getitem__
# The same prices, each mapped to ONE shared str object: snapshot levels key their books with
# it, so all books share a few thousand price strings instead of a copy per level (memory:
# docs/benchmarks.md, "Market data feed").
_PRICE_STRS: dict[str, str] = {}


def _is_plain_decimal(text: str) -> bool:
    """Plain ASCII decimal notation: digits with at most one '.', at least one digit.

    Rejects signs, exponents, whitespace, underscores, NaN/Infinity and non-ASCII digits,
    all of which `Decimal()` would otherwise accept; Polymarket sends none of them, and an
    unusual spelling would break the exact-string book hash anyway.
    """
    return text.isascii() and text.replace(".", "", 1).isdigit()


def parse_price(text: object) -> Decimal | None:
    """The exact value of a valid price string (finite, plain notation, in (0, 1]), else None."""
    if type(text) is not str:
        return None
    value = _PRICE_VALUES.get(text)
    if value is not None:
        return value
    if not _is_plain_decimal(text):
        return None
    value = Decimal(text)
    if not (0 < value <= ONE):
        return None
    _PRICE_VALUES[text] = value
    _PRICE_STRS[text] = text
    return value


def parse_size(text: object) -> Decimal | None:
    """The exact value of a valid size string (finite, plain notation, >= 0), else None."""
    if type(text) is not str or not _is_plain_decimal(text):
        return None
    return Decimal(text)


def is_valid_price(text: object) -> bool:
    return parse_price(text) is not None


def is_valid_size(text: object) -> bool:
    """A size is valid when it is a finite, non-negative decimal in plain notation."""
    return type(text) is str and _is_plain_decimal(text)


def is_zero_size(text: str) -> bool:
    """A (valid) size string that means "remove this level": "0", "0.00", ".0" ..."""
    return text.strip("0.") == ""


def _fmt(value: Decimal) -> str:
    """A decimal as a plain string (no exponent), trailing zeros removed: "0.35", "0.0005"."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


class OrderBook:
    """One token's L2 book: exact strings per level plus metadata needed for the hash.

    `bids`/`asks` map price string -> size string (the level's total size). `_bid_px` and
    `_ask_px` hold the same price strings sorted ascending by exact value, so the best bid is
    `_bid_px[-1]` and the best ask `_ask_px[0]`; `_bid_versions`/`_ask_versions` map them to
    their levels' versions.
    """

    __slots__ = (
        "_ask_hash_json",
        "_ask_px",
        "_ask_top_json",
        "_ask_versions",
        "_bid_hash_json",
        "_bid_px",
        "_bid_top_json",
        "_bid_versions",
        "_top_depth",
        "asks",
        "asset_id",
        "bids",
        "hash",
        "last_trade_price",
        "market",
        "min_order_size",
        "neg_risk",
        "tick_size",
        "timestamp",
    )

    def __init__(
        self,
        *,
        market: str,
        asset_id: str,
        tick_size: str | None = None,
        min_order_size: str = "5",
        neg_risk: bool = False,
        last_trade_price: str = "",
        timestamp: str = "",
        hash: str = "",
    ) -> None:
        self.market = market
        self.asset_id = asset_id
        self.tick_size = tick_size
        self.min_order_size = min_order_size
        self.neg_risk = neg_risk
        self.last_trade_price = last_trade_price
        self.timestamp = timestamp  # epoch ms as the exchange's string
        self.hash = hash  # the last hash the exchange stated for this book
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}
        self._bid_px: list[str] = []
        self._ask_px: list[str] = []
        # price string -> the level's version (module docstring), for every level of the side
        self._bid_versions: dict[str, bytes] = {}
        self._ask_versions: dict[str, bytes] = {}
        # Per-side caches, dropped by any change to that side (a price_change entry touches
        # one side): the side's JSON for the hash, and its top levels' JSON for the bus.
        self._bid_hash_json: bytes | None = None
        self._ask_hash_json: bytes | None = None
        self._bid_top_json: bytes | None = None
        self._ask_top_json: bytes | None = None
        self._top_depth = 0

    def __repr__(self) -> str:
        return (
            f"<OrderBook {self.asset_id[:10]}… bids={len(self.bids)} asks={len(self.asks)} "
            f"best={self.best_bid_str()}/{self.best_ask_str()} ts={self.timestamp}>"
        )

    # --- snapshots ----------------------------------------------------------------------------

    @classmethod
    def from_snapshot(
        cls,
        msg: Mapping[str, Any],
        *,
        min_order_size: str = "5",
        neg_risk: bool = False,
        tick_size: str | None = None,
    ) -> OrderBook:
        """A book from a WS `book` event or a REST `/book` response.

        Fields the message carries win over the keyword defaults (REST carries all of them;
        WS carries `tick_size` and `last_trade_price` only on the subscription snapshot).
        Raises ValueError if the message is not a valid book; nothing is half-built then.
        """
        market, asset_id = msg.get("market"), msg.get("asset_id")
        if type(market) is not str or type(asset_id) is not str or not asset_id:
            raise ValueError("book snapshot without market/asset_id")
        book = cls(
            market=market,
            asset_id=asset_id,
            tick_size=tick_size,
            min_order_size=min_order_size,
            neg_risk=neg_risk,
        )
        book.replace_from_snapshot(msg)
        return book

    def replace_from_snapshot(self, msg: Mapping[str, Any]) -> None:
        """Replace both sides with a snapshot of the same token.

        The post-trade WS `book` omits `tick_size`, `last_trade_price` (and never carries
        `min_order_size`/`neg_risk`): absent fields keep their current values. Raises
        ValueError (and leaves the book untouched) if any level is invalid.
        """
        asset_id = msg.get("asset_id")
        if asset_id is not None and asset_id != self.asset_id:
            raise ValueError(f"snapshot for {asset_id!r} applied to book {self.asset_id!r}")
        bids = _snapshot_side(msg.get("bids"))
        asks = _snapshot_side(msg.get("asks"))
        meta = {}
        for key in ("timestamp", "hash", "tick_size", "min_order_size", "last_trade_price"):
            value = msg.get(key)
            if value is not None:
                if type(value) is not str:
                    raise ValueError(f"book snapshot field {key} is not a string")
                meta[key] = value
        tick = meta.get("tick_size")
        if tick is not None and parse_price(tick) is None:
            raise ValueError(f"invalid tick_size {tick!r}")
        neg_risk = msg.get("neg_risk")
        if neg_risk is not None and type(neg_risk) is not bool:
            raise ValueError("book snapshot field neg_risk is not a bool")
        # Validated: now swap in (cannot fail past this point).
        self._install_levels(bids, asks)
        self.timestamp = meta.get("timestamp", self.timestamp)
        self.hash = meta.get("hash", "")
        self.tick_size = meta.get("tick_size", self.tick_size)
        self.min_order_size = meta.get("min_order_size", self.min_order_size)
        self.last_trade_price = meta.get("last_trade_price", self.last_trade_price)
        if neg_risk is not None:
            self.neg_risk = neg_risk

    def _install_levels(
        self, bids: tuple[dict[str, str], list[str]], asks: tuple[dict[str, str], list[str]]
    ) -> None:
        """Both sides from validated (levels, ascending prices) pairs (`_snapshot_side`).
        A level the book already holds at the same size keeps its version; every other
        level gets one new version (shared: versions only need to differ per level)."""
        version = _next_version()
        self._bid_versions = _carried_versions(self.bids, self._bid_versions, bids[0], version)
        self._ask_versions = _carried_versions(self.asks, self._ask_versions, asks[0], version)
        self.bids, self._bid_px = bids
        self.asks, self._ask_px = asks
        self._bid_hash_json = self._ask_hash_json = None
        self._bid_top_json = self._ask_top_json = None

    # --- deltas -------------------------------------------------------------------------------

    def apply_change(self, side: str, price: str, size: str) -> None:
        """Set one level: `size` is the level's new TOTAL (not a delta); a zero size removes it.

        "BUY" is a bid level, "SELL" an ask level. Raises ValueError on invalid input (the
        feed parser validates first and never lets such input reach a book).
        """
        if side != BUY and side != SELL:
            raise ValueError(f"side must be BUY or SELL, not {side!r}")
        if parse_price(price) is None:
            raise ValueError(f"invalid price {price!r}")
        if not is_valid_size(size):
            raise ValueError(f"invalid size {size!r}")
        self._set_level(side == BUY, price, size)

    def _set_level(self, is_bid: bool, price: str, size: str) -> None:
        """Hot path for validated input: `price` must already be in `_PRICE_VALUES`."""
        if is_bid:
            levels, order, versions = self.bids, self._bid_px, self._bid_versions
            self._bid_hash_json = self._bid_top_json = None
        else:
            levels, order, versions = self.asks, self._ask_px, self._ask_versions
            self._ask_hash_json = self._ask_top_json = None
        head = size[0]  # validated: a non-empty plain decimal
        if (head == "0" or head == ".") and is_zero_size(size):
            if levels.pop(price, None) is not None:
                del versions[price]
                del order[bisect_left(order, _PRICE_VALUES[price], key=_price_value)]
            elif levels:
                self._drop_alias(levels, order, versions, price)
            return
        if price not in levels:
            value = _PRICE_VALUES[price]
            i = bisect_left(order, value, key=_price_value)
            if i < len(order) and _PRICE_VALUES[order[i]] == value:
                # Same price spelled differently ("0.5" vs "0.50"): one level, newest spelling.
                del levels[order[i]]
                del versions[order[i]]
                order[i] = price
            else:
                order.insert(i, price)
        levels[price] = size
        versions[price] = _next_version()

    def _drop_alias(
        self, levels: dict[str, str], order: list[str], versions: dict[str, bytes], price: str
    ) -> None:
        value = _PRICE_VALUES[price]
        i = bisect_left(order, value, key=_price_value)
        if i < len(order) and _PRICE_VALUES[order[i]] == value:
            del levels[order[i]]
            del versions[order[i]]
            del order[i]

    # --- reads --------------------------------------------------------------------------------

    def best_bid_str(self) -> str | None:
        return self._bid_px[-1] if self._bid_px else None

    def best_ask_str(self) -> str | None:
        return self._ask_px[0] if self._ask_px else None

    def best_bid(self) -> Decimal | None:
        return _PRICE_VALUES[self._bid_px[-1]] if self._bid_px else None

    def best_ask(self) -> Decimal | None:
        return _PRICE_VALUES[self._ask_px[0]] if self._ask_px else None

    def mid(self) -> Decimal | None:
        """(best bid + best ask) / 2, exact; None unless both sides have a level."""
        if not self._bid_px or not self._ask_px:
            return None
        return (_PRICE_VALUES[self._bid_px[-1]] + _PRICE_VALUES[self._ask_px[0]]) / TWO

    def spread(self) -> Decimal | None:
        if not self._bid_px or not self._ask_px:
            return None
        return _PRICE_VALUES[self._ask_px[0]] - _PRICE_VALUES[self._bid_px[-1]]

    def is_crossed(self) -> bool:
        """Best bid >= best ask: expected only for a moment inside a trade burst."""
        if not self._bid_px or not self._ask_px:
            return False
        return _PRICE_VALUES[self._bid_px[-1]] >= _PRICE_VALUES[self._ask_px[0]]

    def levels(self, side: str, depth: int | None = None) -> list[tuple[Decimal, Decimal]]:
        """(price, size) best-first: bids high to low, asks low to high."""
        prices = self._best_first(side, depth)
        sizes = self.bids if side == BUY else self.asks
        return [(_PRICE_VALUES[p], Decimal(sizes[p])) for p in prices]

    def top_levels(self, side: str, depth: int) -> list[list[str]]:
        """[[price_str, size_str], ...] best-first, the exact strings (the bus's shape)."""
        sizes = self.bids if side == BUY else self.asks
        return [[p, sizes[p]] for p in self._best_first(side, depth)]

    def top_levels_json(self, side: str, depth: int) -> bytes:
        """The bus's JSON members of one side's top levels and their versions,
        `"bids":[...],"bid_versions":[...]` (asks: `"asks"`, `"ask_versions"`), cached until
        that side changes."""
        if depth != self._top_depth:
            self._top_depth = depth
            self._bid_top_json = self._ask_top_json = None
        if side == BUY:
            cached = self._bid_top_json
            if cached is None:
                prices = self._best_first(BUY, depth)
                bids = self.bids
                cached = self._bid_top_json = b'"bids":%b,"bid_versions":[%b]' % (
                    orjson.dumps([[p, bids[p]] for p in prices]),
                    b",".join(map(self._bid_versions.__getitem__, prices)),
                )
            return cached
        cached = self._ask_top_json
        if cached is None:
            prices = self._best_first(SELL, depth)
            asks = self.asks
            cached = self._ask_top_json = b'"asks":%b,"ask_versions":[%b]' % (
                orjson.dumps([[p, asks[p]] for p in prices]),
                b",".join(map(self._ask_versions.__getitem__, prices)),
            )
        return cached

    def _best_first(self, side: str, depth: int | None) -> list[str]:
        if side == BUY:  # ascending list: the best bids are at the end
            if depth is None:
                return self._bid_px[::-1]
            return self._bid_px[: -depth - 1 : -1] if depth > 0 else []
        if side == SELL:  # ascending list: the best asks are at the start
            return self._ask_px[:] if depth is None else self._ask_px[: max(depth, 0)]
        raise ValueError(f"side must be BUY or SELL, not {side!r}")

    def level_size(self, side: str, price: str) -> str | None:
        return (self.bids if side == BUY else self.asks).get(price)

    def __len__(self) -> int:
        return len(self.bids) + len(self.asks)

    # --- wire and hash ------------------------------------------------------------------------

    def to_wire(self) -> dict[str, Any]:
        """The REST `/book` shape: bids ascending, asks descending (best LAST), exact strings."""
        bids, asks = self.bids, self.asks
        return {
            "market": self.market,
            "asset_id": self.asset_id,
            "timestamp": self.timestamp,
            "hash": self.hash,
            "bids": [{"price": p, "size": bids[p]} for p in self._bid_px],
            "asks": [{"price": p, "size": asks[p]} for p in reversed(self._ask_px)],
            "min_order_size": self.min_order_size,
            "tick_size": self.tick_size,
            "neg_risk": self.neg_risk,
            "last_trade_price": self.last_trade_price,
        }

    def compute_hash(
        self, *, timestamp: str | None = None, last_trade_price: str | None = None
    ) -> str:
        """Polymarket's book hash (reference §1.4, verified on real REST and WS books).

        sha1 of the compact JSON (separators "," and ":") of, in this key order:
        {market, asset_id, timestamp, hash: "", bids (ascending), asks (descending),
        min_order_size, tick_size, neg_risk, last_trade_price}, prices and sizes as the exact
        strings received. For WS books `min_order_size` and `neg_risk` are not on the wire:
        they come from the market ("5" and false for most markets).

        How a `price_change` entry's `hash` relates to the book (checked on the recorded
        2026-09 sequence, see tests/marketdata/test_book.py): it is this hash of the token's
        book AFTER applying that entry, with `timestamp` = the price_change MESSAGE's
        timestamp, and tick_size/min_order_size/neg_risk/last_trade_price as the exchange
        holds them at that moment. 47 of token A's 49 entries match that way. The 2 that
        do not are the first two entries of the trade burst at ts 1790658827000 (the book is
        crossed after each): they already carry the hash of the post-burst book. The third
        entry of the burst matches only with last_trade_price = the trade's price (0.301),
        because the exchange updated its last trade price before the `last_trade_price`
        event reached us; `BookKeeper` recovers that price from the hash itself.

        `timestamp`/`last_trade_price` override the book's own values for that check.
        """
        ts = self.timestamp if timestamp is None else timestamp
        ltp = self.last_trade_price if last_trade_price is None else last_trade_price
        return hashlib.sha1(self._hash_text(ts, ltp), usedforsecurity=False).hexdigest()

    def _hash_text(self, ts: str, ltp: str) -> bytes:
        """The SHA-1 input of `compute_hash` (each side's text cached until that side changes)."""
        bid_json = self._bid_hash_json
        if bid_json is None:
            bids = self.bids
            # Prices and sizes are validated plain ASCII decimals: safe to splice unescaped.
            bid_json = self._bid_hash_json = ",".join(
                [f'{{"price":"{p}","size":"{bids[p]}"}}' for p in self._bid_px]
            ).encode()
        ask_json = self._ask_hash_json
        if ask_json is None:
            asks = self.asks
            ask_json = self._ask_hash_json = ",".join(
                [f'{{"price":"{p}","size":"{asks[p]}"}}' for p in reversed(self._ask_px)]
            ).encode()
        return (
            b'{"market":%b,"asset_id":%b,"timestamp":%b,"hash":"","bids":[%b],"asks":[%b],'
            b'"min_order_size":%b,"tick_size":%b,"neg_risk":%b,"last_trade_price":%b}'
            % (
                orjson.dumps(self.market),
                orjson.dumps(self.asset_id),
                orjson.dumps(ts),
                bid_json,
                ask_json,
                orjson.dumps(self.min_order_size),
                orjson.dumps(self.tick_size),
                b"true" if self.neg_risk else b"false",
                orjson.dumps(ltp),
            )
        )

    def hash_matches(
        self,
        expected: str,
        *,
        timestamp: str | None = None,
        last_trade_price: str | None = None,
    ) -> bool:
        return self.compute_hash(timestamp=timestamp, last_trade_price=last_trade_price) == (
            expected
        )


def _carried_versions(
    old: dict[str, str], old_versions: dict[str, bytes], new: dict[str, str], version: bytes
) -> dict[str, bytes]:
    """The versions of a side's new levels: a level shown at the same price string and size
    as before keeps its version, every other one gets `version`."""
    if not old:
        return dict.fromkeys(new, version)
    return {p: old_versions[p] if old.get(p) == s else version for p, s in new.items()}


def _snapshot_side(raw: object) -> tuple[dict[str, str], list[str]]:
    """Validate and load one side of a snapshot: any order in, (levels, ascending prices) out.

    Zero-size levels are dropped (a level of size 0 does not exist). Raises ValueError.
    """
    if raw is None:
        return {}, []
    if not isinstance(raw, list):
        raise ValueError("book side is not a list")
    levels: dict[str, str] = {}
    seen: dict[Decimal, str] = {}
    for level in raw:
        if not isinstance(level, dict):
            raise ValueError("book level is not an object")
        price, size = level.get("price"), level.get("size")
        value = parse_price(price)
        if value is None:
            raise ValueError(f"invalid price {price!r} in book")
        if not is_valid_size(size):
            raise ValueError(f"invalid size {size!r} in book")
        assert isinstance(price, str) and isinstance(size, str)
        price = _PRICE_STRS[price]
        old = seen.get(value)
        if old is not None:
            del levels[old]
        if is_zero_size(size):
            seen.pop(value, None)
            continue
        seen[value] = price
        levels[price] = size
    return levels, sorted(levels, key=_price_value)


def book_from_levels(
    *,
    market: str,
    asset_id: str,
    bids: Iterable[tuple[str, str]],
    asks: Iterable[tuple[str, str]],
    **meta: Any,
) -> OrderBook:
    """Convenience for tests and tools: a book from (price, size) string pairs."""
    return OrderBook.from_snapshot(
        {
            "market": market,
            "asset_id": asset_id,
            "bids": [{"price": p, "size": s} for p, s in bids],
            "asks": [{"price": p, "size": s} for p, s in asks],
        },
        **meta,
    )
