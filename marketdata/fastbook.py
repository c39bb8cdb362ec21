"""The optional compiled feed path (marketdata/_fastbook.c) and the switch that picks it.

`make install` builds `marketdata/_fastbook*.so` in place (`setup.py build_ext --inplace`);
on a machine without a C compiler the build is skipped and everything runs the pure-Python
path, which is the reference: the compiled path must produce the same books, hashes, tops
and counters (tests/marketdata/test_fastbook.py replays the same frames through both).

`native` is the compiled module, or None when it is not built or when the environment
variable POLYSIM_FEED_PURE is set to a non-empty value other than "0" (to run the test suite
on the pure path, or to rule the extension out while debugging). A BookKeeper can also be
forced either way with `BookKeeper(native=False)`.

`NativeOrderBook` (None without the module) is the OrderBook the compiled path keeps: the
same API, its levels held in C (`_fastbook.Levels`: one sorted array per side), so that
applying an entry, encoding a top and building the hash text walk one contiguous array. Its
`timestamp` and `hash` are held there too (the compiled feed writes them with every entry
without making a str), and so is its token's state in a compiled BookKeeper (`_fastbook.Tokens`).
"""

from __future__ import annotations

import os
from decimal import Decimal
from types import ModuleType
from typing import Final

import orjson

from marketdata import book


def _load() -> ModuleType | None:
    if os.environ.get("POLYSIM_FEED_PURE", "") not in ("", "0"):
        return None
    try:
        from marketdata import _fastbook  # type: ignore[attr-defined]
    except ImportError:
        return None
    _fastbook.bind(book._PRICE_STRS, book.parse_price, orjson.dumps, book.OrderBook)
    book._native_hash_text = _fastbook.hash_text
    return _fastbook


native: Final[ModuleType | None] = _load()


def available() -> bool:
    """True when the compiled path is built and not switched off."""
    return native is not None


class _NativeOrderBook(book.OrderBook):
    """An OrderBook whose levels live in C (`_fastbook.Levels`), for the compiled path.

    Same behaviour and API as OrderBook (the differential tests compare them); only the
    storage differs: each side is one sorted C array holding the canonical price str and the
    size's exact text, instead of a dict, a sorted list and a str per level. `bids`/`asks`
    and `_bid_px`/`_ask_px` are read-only snapshots built on access (a dict and a list, as
    OrderBook's); change a book through `apply_change`/`_set_level`/snapshots only.
    `timestamp` and `hash` are properties over the same C object (OrderBook's slots of those
    names stay unused).
    """

    __slots__ = ("_core",)

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
        assert native is not None
        self._core = native.Levels()
        self.market = market
        self.asset_id = asset_id
        self.tick_size = tick_size
        self.min_order_size = min_order_size
        self.neg_risk = neg_risk
        self.last_trade_price = last_trade_price
        self.timestamp = timestamp
        self.hash = hash
        self._top_depth = 0

    @property  # type: ignore[override]
    def timestamp(self) -> str:
        return self._core.timestamp  # type: ignore[no-any-return]

    @timestamp.setter
    def timestamp(self, value: str) -> None:
        self._core.timestamp = value

    @property  # type: ignore[override]
    def hash(self) -> str:
        return self._core.hash  # type: ignore[no-any-return]

    @hash.setter
    def hash(self, value: str) -> None:
        self._core.hash = value

    # The storage OrderBook's own methods read, built from the C arrays (read-only copies).
    @property
    def bids(self) -> dict[str, str]:  # type: ignore[override]
        return self._core.sizes(True)  # type: ignore[no-any-return]

    @property
    def asks(self) -> dict[str, str]:  # type: ignore[override]
        return self._core.sizes(False)  # type: ignore[no-any-return]

    @property
    def _bid_px(self) -> list[str]:  # type: ignore[override]
        return self._core.prices(True)  # type: ignore[no-any-return]

    @property
    def _ask_px(self) -> list[str]:  # type: ignore[override]
        return self._core.prices(False)  # type: ignore[no-any-return]

    def _install_levels(
        self, bids: tuple[dict[str, str], list[str]], asks: tuple[dict[str, str], list[str]]
    ) -> None:
        self._core.load(True, *bids)
        self._core.load(False, *asks)

    def _set_level(self, is_bid: bool, price: str, size: str) -> None:
        self._core.set(is_bid, price, size)

    def best_bid_str(self) -> str | None:
        return self._core.best(True)  # type: ignore[no-any-return]

    def best_ask_str(self) -> str | None:
        return self._core.best(False)  # type: ignore[no-any-return]

    def best_bid(self) -> Decimal | None:
        price = self._core.best(True)
        return None if price is None else book._PRICE_VALUES[price]

    def best_ask(self) -> Decimal | None:
        price = self._core.best(False)
        return None if price is None else book._PRICE_VALUES[price]

    def mid(self) -> Decimal | None:
        bid, ask = self.best_bid(), self.best_ask()
        return None if bid is None or ask is None else (bid + ask) / book.TWO

    def spread(self) -> Decimal | None:
        bid, ask = self.best_bid(), self.best_ask()
        return None if bid is None or ask is None else ask - bid

    def is_crossed(self) -> bool:
        bid, ask = self.best_bid(), self.best_ask()
        return bid is not None and ask is not None and bid >= ask

    def top_levels(self, side: str, depth: int) -> list[list[str]]:
        if side != book.BUY and side != book.SELL:
            raise ValueError(f"side must be BUY or SELL, not {side!r}")
        return self._core.top(side == book.BUY, depth)  # type: ignore[no-any-return]

    def top_levels_json(self, side: str, depth: int) -> bytes:
        return orjson.dumps(self.top_levels(side, depth))

    def level_size(self, side: str, price: str) -> str | None:
        return self._core.size(side == book.BUY, price)  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return self._core.count(True) + self._core.count(False)  # type: ignore[no-any-return]

    def _hash_text(self, ts: str, ltp: str) -> bytes:
        assert native is not None
        return native.hash_text(self, ts, ltp)  # type: ignore[no-any-return]


NativeOrderBook: type[book.OrderBook] | None = None
if native is not None:
    native.bind_native(_NativeOrderBook)
    NativeOrderBook = _NativeOrderBook
