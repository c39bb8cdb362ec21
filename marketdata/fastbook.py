"""The optional compiled feed path (marketdata/_fastbook.c) and the switch that picks it.

`make install` builds `marketdata/_fastbook*.so` in place (`setup.py build_ext --inplace`);
on a machine without a C compiler the build is skipped and everything runs the pure-Python
path, which is the reference: the compiled path must produce the same books, hashes, tops
and counters (tests/marketdata/test_fastbook.py replays the same frames through both).

`native` is the compiled module, or None when it is not built or when the environment
variable POLYSIM_FEED_PURE is set to a non-empty value other than "0" (to run the test suite
on the pure path, or to rule the extension out while debugging). A BookKeeper can also be
forced either way with `BookKeeper(native=False)`.
"""

from __future__ import annotations

import os
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
