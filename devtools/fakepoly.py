"""A fake Polymarket for offline use: real HTTP and a real websocket on one loopback port.

    /gamma/...     Gamma: markets and events (keyset + legacy lists, single items, search)
    /clob/...      CLOB public reads: /book, POST /books, /markets[/{cid}], /clob-markets/{cid},
                   /tick-size, /neg-risk, /fee-rate, /prices-history, /midpoint, /spread,
                   /last-trade-price, /time, /ok, /
    /ws/market     the market channel as it is now (polymarket.md §9): a subscription with
                   `initial_dump` (books as one array frame, the default) and `level`, then
                   (un)subscribe operations on the open socket; text PING → PONG once a
                   valid subscription came, a PING before it closes the socket (1008);
                   replayed and walked events
    /fakepoly/meta what is loaded and what is synthetic

Everything is served from a fixtures directory kept in memory: the shared recorded layout
(`shared/fixtures/polymarket` with gamma/ clob/ ws/) or the project's SYNTHETIC demo dataset
(devtools/demo_data, the default). Files are recognised by shape, not by name. Books carry
Polymarket's SHA-1 hash (polymarket.md §1.4) and list the best price last.

Synthetic data is labelled: `--walk` generates a random walk (price_change with both mirrored
entries and per-entry hashes, occasional last_trade_price + post-trade book) over the loaded
market metadata, and says so in the log and in /fakepoly/meta; wire messages keep Polymarket's
exact shape.

Faults for tests (thread-safe): drop_connections(), send_raw(text), pause()/resume(),
fail_next(n, status) on HTTP, set_keyset_enabled(False) (keyset endpoints answer 404),
resolve_market(condition_id, winning_token_id | None).

One asyncio server (stdlib streams) parses HTTP/1.1 itself, because POST /books has a body and
websockets' own handshake parser refuses request bodies; upgrade requests are handed to
websockets' Sans-I/O ServerProtocol, so the websocket framing is the library's, not ours.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

logger = logging.getLogger("polysim.fakepoly")

DEMO_DATA_DIR = Path(__file__).resolve().parent / "demo_data"
LAYOUT_DIRS = ("gamma", "clob", "ws")
KEYSET_MARKETS_MAX = 100
KEYSET_EVENTS_MAX = 500
CLOB_PAGE = 100
CLOB_END_CURSOR = "LTE="
CUSTOM_EVENTS = frozenset({"best_bid_ask", "new_market", "market_resolved"})
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_T = TypeVar("_T")


# --- Books ------------------------------------------------------------------------------------
def book_hash(
    *,
    market: str,
    asset_id: str,
    timestamp: str,
    bids: list[dict[str, str]],
    asks: list[dict[str, str]],
    min_order_size: str,
    tick_size: str,
    neg_risk: bool,
    last_trade_price: str,
) -> str:
    """Polymarket's book hash (polymarket.md §1.4, verified on recorded REST and WS books):
    SHA-1 of the compact JSON of these keys in this order, with `hash` empty and bids
    ascending / asks descending as exact strings. Implemented here rather than imported from
    marketdata.book so the fake stays independent of the code it is used to test."""
    payload = {
        "market": market,
        "asset_id": asset_id,
        "timestamp": timestamp,
        "hash": "",
        "bids": bids,
        "asks": asks,
        "min_order_size": min_order_size,
        "tick_size": tick_size,
        "neg_risk": neg_risk,
        "last_trade_price": last_trade_price,
    }
    return hashlib.sha1(json.dumps(payload, separators=(",", ":")).encode()).hexdigest()  # noqa: S324 - Polymarket's recipe


def fmt(value: Decimal) -> str:
    """Polymarket's number style: no exponent, no trailing zeros ("0.5", "0.301", "100")."""
    return format(value.normalize(), "f")


def now_ms() -> str:
    return str(int(time.time() * 1000))


@dataclass
class FakeBook:
    """One token's book; levels keyed by the exact price string as received or generated."""

    market: str
    asset_id: str
    bids: dict[str, str]
    asks: dict[str, str]
    timestamp: str
    tick_size: str = "0.01"
    min_order_size: str = "5"
    neg_risk: bool = False
    last_trade_price: str = ""

    def levels(self, side: str) -> list[dict[str, str]]:
        """Bids ascending, asks descending: the best price is last (polymarket.md §0.3)."""
        book = self.bids if side == "bids" else self.asks
        ordered = sorted(book.items(), key=lambda kv: Decimal(kv[0]), reverse=side == "asks")
        return [{"price": price, "size": size} for price, size in ordered]

    def hash(self) -> str:
        return book_hash(
            market=self.market,
            asset_id=self.asset_id,
            timestamp=self.timestamp,
            bids=self.levels("bids"),
            asks=self.levels("asks"),
            min_order_size=self.min_order_size,
            tick_size=self.tick_size,
            neg_risk=self.neg_risk,
            last_trade_price=self.last_trade_price,
        )

    def rest(self) -> dict[str, Any]:
        """The `GET /book` summary: all ten keys, in Polymarket's order."""
        return {
            "market": self.market,
            "asset_id": self.asset_id,
            "timestamp": self.timestamp,
            "hash": self.hash(),
            "bids": self.levels("bids"),
            "asks": self.levels("asks"),
            "min_order_size": self.min_order_size,
            "tick_size": self.tick_size,
            "neg_risk": self.neg_risk,
            "last_trade_price": self.last_trade_price,
        }

    def ws(self, *, snapshot: bool = True) -> dict[str, Any]:
        """A websocket `book` event: the subscription snapshot carries tick_size and
        last_trade_price; the refresh after a trade omits them (as recorded)."""
        if snapshot:
            return {
                "market": self.market,
                "asset_id": self.asset_id,
                "timestamp": self.timestamp,
                "hash": self.hash(),
                "bids": self.levels("bids"),
                "asks": self.levels("asks"),
                "tick_size": self.tick_size,
                "event_type": "book",
                "last_trade_price": self.last_trade_price,
            }
        return {
            "market": self.market,
            "asset_id": self.asset_id,
            "bids": self.levels("bids"),
            "asks": self.levels("asks"),
            "hash": self.hash(),
            "timestamp": self.timestamp,
            "event_type": "book",
        }

    def _key(self, book: dict[str, str], price: str) -> str:
        """The stored key equal in value to `price` ("0.50" and "0.5" are one level)."""
        if price in book:
            return price
        value = Decimal(price)
        return next((key for key in book if Decimal(key) == value), price)

    def set_level(self, side: str, price: str, size: str) -> None:
        """Set a level's new total size; "0" removes it (price_change semantics)."""
        book = self.bids if side == "bids" else self.asks
        key = self._key(book, price)
        if Decimal(size) == 0:
            book.pop(key, None)
        else:
            book[key] = size

    def best(self, side: str) -> Decimal | None:
        book = self.bids if side == "bids" else self.asks
        if not book:
            return None
        prices = [Decimal(p) for p in book]
        return max(prices) if side == "bids" else min(prices)

    def best_str(self, side: str) -> str:
        best = self.best(side)
        if best is None:
            return "0" if side == "bids" else "1"
        book = self.bids if side == "bids" else self.asks
        return self._key(book, fmt(best))

    def mid(self) -> Decimal | None:
        bid, ask = self.best("bids"), self.best("asks")
        if bid is None or ask is None:
            return None
        return (bid + ask) / 2

    @classmethod
    def from_message(cls, data: Mapping[str, Any], defaults: Mapping[str, Any]) -> FakeBook:
        def side(levels: Any) -> dict[str, str]:
            return {
                str(level["price"]): str(level["size"])
                for level in levels or []
                if isinstance(level, Mapping) and Decimal(str(level["size"])) != 0
            }

        return cls(
            market=str(data.get("market") or defaults.get("market") or ""),
            asset_id=str(data["asset_id"]),
            bids=side(data.get("bids")),
            asks=side(data.get("asks")),
            timestamp=str(data.get("timestamp") or now_ms()),
            tick_size=str(data.get("tick_size") or defaults.get("tick_size") or "0.01"),
            min_order_size=str(data.get("min_order_size") or defaults.get("min_order_size") or "5"),
            neg_risk=bool(data.get("neg_risk", defaults.get("neg_risk", False))),
            last_trade_price=str(data.get("last_trade_price") or ""),
        )


# --- Fixture loading ----------------------------------------------------------------------------
@dataclass
class FixtureSet:
    """What a fixtures directory holds, classified by shape."""

    path: Path
    gamma_markets: dict[str, dict[str, Any]] = field(default_factory=dict)  # by conditionId
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # by id, without markets
    event_markets: dict[str, list[str]] = field(default_factory=dict)  # event id → cids
    clob_markets: dict[str, dict[str, Any]] = field(default_factory=dict)  # by condition_id
    compact: dict[str, dict[str, Any]] = field(default_factory=dict)  # /clob-markets overrides
    books: dict[str, dict[str, Any]] = field(default_factory=dict)  # by asset_id (raw)
    sequences: dict[str, list[str]] = field(default_factory=dict)  # file stem → raw messages
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> FixtureSet:
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"fixtures directory not found: {root}")
        fixtures = cls(root)
        dirs = [root / d for d in LAYOUT_DIRS if (root / d).is_dir()] or [root]
        files = sorted(f for d in dirs for f in d.rglob("*") if f.suffix in (".json", ".jsonl"))
        manifest = root / "manifest.json"
        if manifest.is_file() and manifest not in files:
            files.insert(0, manifest)
        sequence_books: dict[str, dict[str, Any]] = {}
        for file in files:
            if file.suffix == ".jsonl":
                lines = [ln for ln in file.read_text().splitlines() if ln.strip()]
                fixtures._sequence(file.stem, lines, sequence_books, verbatim=True)
                continue
            data = json.loads(file.read_text())
            if (
                isinstance(data, list)
                and data
                and all(isinstance(m, dict) and "event_type" in m for m in data)
            ):
                raw = [json.dumps(m, separators=(",", ":")) for m in data]
                fixtures._sequence(file.stem, raw, sequence_books, verbatim=False)
                continue
            for item in data if isinstance(data, list) else [data]:
                if isinstance(item, dict):
                    fixtures._classify(item)
        for asset_id, book in sequence_books.items():
            fixtures.books.setdefault(asset_id, book)
        return fixtures

    def _sequence(
        self, name: str, raw: list[str], books: dict[str, dict[str, Any]], *, verbatim: bool
    ) -> None:
        # The same recording may exist as .json and .jsonl: keep one, preferring the JSONL
        # file's verbatim lines.
        if name in self.sequences and not verbatim:
            return
        self.sequences[name] = raw
        for line in raw:
            message = json.loads(line)
            if message.get("event_type") == "book" and message.get("asset_id"):
                books.setdefault(str(message["asset_id"]), message)

    def _classify(self, item: dict[str, Any]) -> None:
        if "results" in item and "meta" in item:  # a harness capture wrapping real bodies
            for result in item["results"]:
                body = result.get("sampleData") if isinstance(result, dict) else None
                for obj in body if isinstance(body, list) else [body]:
                    if isinstance(obj, dict):
                        self._classify(obj)
        elif "synthetic" in item and "label" in item:
            self.meta.update(item)
        elif "events" in item and "pagination" in item:  # /public-search
            for event in item["events"]:
                if isinstance(event, dict):
                    self._event(event)
        elif "conditionId" in item:
            self._gamma_market(item)
        elif isinstance(item.get("markets"), list) and ("title" in item or "ticker" in item):
            self._event(item)
        elif "condition_id" in item and "tokens" in item:
            self.clob_markets[str(item["condition_id"])] = item
        elif "condition_id" in item and "mts" in item:
            self.compact[str(item["condition_id"])] = item
        elif isinstance(item.get("data"), list) and "next_cursor" in item:  # CLOB /markets page
            for market in item["data"]:
                if isinstance(market, dict) and market.get("condition_id"):
                    self.clob_markets.setdefault(str(market["condition_id"]), market)
        elif "asset_id" in item and "bids" in item and "asks" in item:
            asset_id = str(item["asset_id"])
            current = self.books.get(asset_id)
            if current is None or int(item.get("timestamp") or 0) >= int(
                current.get("timestamp") or 0
            ):
                self.books[asset_id] = item

    def _gamma_market(self, market: dict[str, Any], event_id: str | None = None) -> None:
        cid = str(market["conditionId"])
        merged = {**self.gamma_markets.get(cid, {}), **market}
        summaries = merged.get("events")
        if isinstance(summaries, list) and summaries and isinstance(summaries[0], dict):
            summary = summaries[0]
            if summary.get("id"):
                eid = str(summary["id"])
                self.events.setdefault(eid, {k: v for k, v in summary.items() if k != "markets"})
                event_id = event_id or eid
        if event_id is not None:
            cids = self.event_markets.setdefault(event_id, [])
            if cid not in cids:
                cids.append(cid)
            if not merged.get("events"):
                merged["events"] = [self.events[event_id]]
        self.gamma_markets[cid] = merged

    def _event(self, event: dict[str, Any]) -> None:
        eid = str(event["id"])
        summary = {k: v for k, v in event.items() if k != "markets"}
        self.events[eid] = {**self.events.get(eid, {}), **summary}
        for market in event.get("markets") or []:
            if isinstance(market, dict) and market.get("conditionId"):
                self._gamma_market(market, event_id=eid)


# --- Websocket connections --------------------------------------------------------------------
@dataclass(eq=False)
class _WsConn:
    writer: asyncio.StreamWriter
    protocol: ServerProtocol
    assets: set[str] = field(default_factory=set)
    custom: bool = False
    subscribed: bool = False  # a valid subscription came (PING is refused before)
    fragments: list[bytes] = field(default_factory=list)

    def flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.writer.write(data)
            elif self.writer.can_write_eof() and not self.writer.is_closing():
                self.writer.write_eof()

    def send(self, text: str) -> None:
        if self.protocol.state is not State.OPEN or self.writer.is_closing():
            return
        self.protocol.send_text(text.encode())
        self.flush()


@dataclass
class _Failure:
    remaining: int
    status: int
    prefix: str
    message: str


def _qs_first(query: Mapping[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[-1] if values else None


def _qs_list(query: Mapping[str, list[str]], key: str) -> list[str]:
    return [v for value in query.get(key, []) for v in value.split(",") if v]


def _bool_param(value: str | None) -> bool | None:
    if value is None:
        return None
    return value.strip().lower() in ("true", "1", "yes")


def _num(value: Any) -> float | int:
    """A Polymarket JSON number for the REST shapes that use numbers (tick sizes, token
    prices): exact short repr via Decimal → float ("0.01" stays 0.01)."""
    number = Decimal(str(value))
    return int(number) if number == number.to_integral_value() else float(number)


class FakePolymarket:
    """The fake server. Build it with a fixtures directory (default: the synthetic demo set),
    then `start_in_thread()` (own loop in a daemon thread; `stop()` ends it) or, inside a running
    loop, `await start()` / `await stop()`. Port 0 picks a free port."""

    def __init__(
        self,
        fixtures: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        walk: bool = False,
        walk_interval: float = 1.0,
        seed: int | None = None,
    ) -> None:
        self.fixtures = FixtureSet.load(fixtures or DEMO_DATA_DIR)
        self.host = host
        self.port = port
        self.walk = walk
        self.walk_interval = walk_interval
        self._rng = random.Random(seed)  # a price walk, not security
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._threaded = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._conns: set[_WsConn] = set()
        self._walk_task: asyncio.Task[None] | None = None
        self._paused = False
        self._keyset_enabled = True
        self._failures: list[_Failure] = []
        # (method, path?query) of the latest HTTP requests, for tests and debugging.
        self.requests: deque[tuple[str, str]] = deque(maxlen=10_000)
        # The token ids of each POST /books, in order (tests count what a client re-fetches).
        self.books_requested: deque[tuple[str, ...]] = deque(maxlen=10_000)
        # Every text frame the clients sent on the websocket, in order (for tests).
        self.client_frames: deque[str] = deque(maxlen=10_000)
        self.frames_sent = 0
        self.frames_dropped = 0
        self.synthetic_tokens: set[str] = set()
        self._resolved: set[str] = set()
        self._build_state()

    # --- State built from fixtures ------------------------------------------------------------
    def _build_state(self) -> None:
        fx = self.fixtures
        self.gamma: dict[str, dict[str, Any]] = {
            cid: dict(m) for cid, m in fx.gamma_markets.items()
        }
        self.events: dict[str, dict[str, Any]] = {eid: dict(e) for eid, e in fx.events.items()}
        self.event_markets: dict[str, list[str]] = {k: list(v) for k, v in fx.event_markets.items()}
        self.clob: dict[str, dict[str, Any]] = {cid: dict(m) for cid, m in fx.clob_markets.items()}
        self.token_market: dict[str, str] = {}
        self.pairs: dict[str, list[str]] = {}  # condition id → [token ids] (outcome order)
        for cid, market in self.gamma.items():
            tokens = _json_list(market.get("clobTokenIds"))
            if tokens:
                self.pairs[cid] = [str(t) for t in tokens]
        for cid, market in self.clob.items():
            tokens = [
                str(t.get("token_id")) for t in market.get("tokens") or [] if t.get("token_id")
            ]
            if tokens:
                self.pairs.setdefault(cid, tokens)
        for cid, tokens in self.pairs.items():
            for token in tokens:
                self.token_market[token] = cid

        self.books: dict[str, FakeBook] = {}
        for asset_id, raw in fx.books.items():
            cid = str(raw.get("market") or self.token_market.get(asset_id, ""))
            self.books[asset_id] = FakeBook.from_message(raw, self._book_defaults(cid))
            self.token_market.setdefault(asset_id, cid)
        # CLOB markets for Gamma markets the fixtures have no CLOB answer for.
        for cid, market in self.gamma.items():
            if cid not in self.clob and cid in self.pairs:
                self.clob[cid] = self._clob_from_gamma(market)
        self.history: dict[str, list[tuple[int, float]]] = {}
        start = int(time.time())
        for token, book in self.books.items():
            self._record_price(token, book, at=start)

    def _book_defaults(self, cid: str) -> dict[str, Any]:
        gamma = self.gamma.get(cid, {})
        clob = self.clob.get(cid, {})
        tick = gamma.get("orderPriceMinTickSize") or clob.get("minimum_tick_size")
        size = gamma.get("orderMinSize") or clob.get("minimum_order_size")
        return {
            "market": cid,
            "tick_size": fmt(Decimal(str(tick))) if tick else "0.01",
            "min_order_size": fmt(Decimal(str(size))) if size else "5",
            "neg_risk": bool(gamma.get("negRisk", clob.get("neg_risk", False))),
        }

    def _clob_from_gamma(self, gamma: Mapping[str, Any]) -> dict[str, Any]:
        """The CLOB `GET /markets/{cid}` view of a Gamma market (no winner flags: only the
        recorded CLOB answers or resolve_market() set those)."""
        cid = str(gamma["conditionId"])
        tokens = self.pairs.get(cid, [])
        outcomes = _json_list(gamma.get("outcomes")) or []
        prices = _json_list(gamma.get("outcomePrices")) or []
        tick = gamma.get("orderPriceMinTickSize")
        if tick is None:
            book = next((self.books[t] for t in tokens if t in self.books), None)
            tick = book.tick_size if book else "0.01"
        return {
            "enable_order_book": bool(gamma.get("enableOrderBook", False)),
            "active": bool(gamma.get("active", True)),
            "closed": bool(gamma.get("closed", False)),
            "archived": bool(gamma.get("archived", False)),
            "accepting_orders": bool(gamma.get("acceptingOrders", False)),
            "accepting_order_timestamp": gamma.get("acceptingOrdersTimestamp"),
            "minimum_order_size": _num(gamma.get("orderMinSize") or 5),
            "minimum_tick_size": _num(tick),
            "condition_id": cid,
            "question_id": gamma.get("questionID", ""),
            "question": gamma.get("question", ""),
            "description": gamma.get("description", ""),
            "market_slug": gamma.get("slug", ""),
            "end_date_iso": gamma.get("endDate"),
            "game_start_time": gamma.get("gameStartTime"),
            "seconds_delay": 0,
            "fpmm": "",
            "maker_base_fee": gamma.get("makerBaseFee", 0),
            "taker_base_fee": gamma.get("takerBaseFee", 0),
            "notifications_enabled": True,
            "neg_risk": bool(gamma.get("negRisk", False)),
            "neg_risk_market_id": gamma.get("negRiskMarketID", ""),
            "neg_risk_request_id": gamma.get("negRiskRequestID", ""),
            "icon": gamma.get("icon", ""),
            "image": gamma.get("image", ""),
            "rewards": {"rates": None, "min_size": 0, "max_spread": 0},
            "is_50_50_outcome": False,
            "tokens": [
                {
                    "token_id": token,
                    "outcome": outcomes[i] if i < len(outcomes) else "",
                    "price": _num(prices[i]) if i < len(prices) else 0,
                    "winner": False,
                }
                for i, token in enumerate(tokens)
            ],
            "tags": [],
        }

    def _compact(self, cid: str) -> dict[str, Any] | None:
        """`GET /clob-markets/{cid}`: recorded override, else derived; `fd` only when the fee
        schedule is actually known (Gamma feeSchedule, or fees explicitly disabled)."""
        if cid in self.fixtures.compact:
            return {k: v for k, v in self.fixtures.compact[cid].items() if k != "condition_id"}
        clob = self.clob.get(cid)
        if clob is None:
            return None
        gamma = self.gamma.get(cid, {})
        compact: dict[str, Any] = {
            "t": [{"t": t["token_id"], "o": t["outcome"]} for t in clob.get("tokens") or []],
            "mts": clob.get("minimum_tick_size"),
            "nr": bool(clob.get("neg_risk")),
        }
        schedule = gamma.get("feeSchedule")
        if isinstance(schedule, Mapping) and schedule.get("rate") is not None:
            compact["fd"] = {"r": schedule["rate"], "e": schedule.get("exponent", 1)}
        elif gamma.get("feesEnabled") is False:
            compact["fd"] = {"r": 0, "e": 1}
        return compact

    def _record_price(self, token: str, book: FakeBook, *, at: int | None = None) -> None:
        mid = book.mid()
        if mid is None and book.last_trade_price:
            mid = Decimal(book.last_trade_price)
        if mid is None:
            return
        points = self.history.setdefault(token, [])
        points.append((at or int(time.time()), float(round(mid, 4))))
        del points[:-5000]

    # --- URLs, lifecycle ----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def gamma_url(self) -> str:
        return f"{self.base_url}/gamma"

    @property
    def clob_url(self) -> str:
        return f"{self.base_url}/clob"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws/market"

    async def start(self) -> Self:
        """Listen (inside the running loop) and, with walk=True, start the synthetic walk."""
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(
            self._on_connection, self.host, self.port, limit=1 << 20
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if self.walk:
            self._seed_synthetic_books()
            self._walk_task = asyncio.create_task(self._walk_loop())
            logger.warning(
                "fakepoly: SYNTHETIC price walk on %d markets (labelled in /fakepoly/meta)",
                len(self._walkable()),
            )
        logger.info(
            "fakepoly on %s (%s): %d Gamma markets, %d CLOB markets, %d books",
            self.base_url,
            self.fixtures.path,
            len(self.gamma),
            len(self.clob),
            len(self.books),
        )
        return self

    async def astop(self) -> None:
        if self._walk_task is not None:
            self._walk_task.cancel()
            self._walk_task = None
        for conn in list(self._conns):
            conn.writer.transport.abort()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> Coroutine[Any, Any, None] | None:
        """Thread mode: stop the server and its thread (blocking). Loop mode (after `await
        start()`): returns the coroutine to await, i.e. `await fake.stop()`."""
        if not self._threaded:
            return self.astop()
        loop, thread = self._loop, self._thread
        if thread is None or loop is None:
            return None  # already stopped
        try:
            asyncio.run_coroutine_threadsafe(self.astop(), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            self._thread = None
        return None

    def start_in_thread(self) -> Self:
        """Run the server on its own event loop in a daemon thread; returns once listening."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._threaded = True
        self._thread = threading.Thread(target=run, name=f"fakepoly-{id(self):x}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fakepoly did not start within 10 s")
        if failure:
            self._thread = None
            raise failure[0]
        return self

    def __enter__(self) -> Self:
        if self._loop is None:
            self.start_in_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, factory: Callable[[], Awaitable[_T]], timeout: float = 30) -> _T | None:
        """Run a coroutine on the server loop from any thread; from the loop's own thread it is
        scheduled instead (returns None)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("fakepoly is not running")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None

        async def wrapper() -> _T:
            return await factory()

        if running is loop:
            task = loop.create_task(wrapper())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return None
        return asyncio.run_coroutine_threadsafe(wrapper(), loop).result(timeout)

    # --- Fault injection and control (thread-safe) ---------------------------------------------
    def set_keyset_enabled(self, enabled: bool) -> None:
        """False: /gamma/markets/keyset and /gamma/events/keyset answer 404 (older API)."""
        with self._lock:
            self._keyset_enabled = enabled

    def fail_next(
        self, count: int = 1, *, status: int = 503, path_prefix: str = "/", message: str = ""
    ) -> None:
        """The next `count` HTTP requests under `path_prefix` answer `status` with
        `{"error": message}` (e.g. a transient 503 to test client retries)."""
        with self._lock:
            self._failures.append(
                _Failure(count, status, path_prefix, message or REASONS.get(status, "error"))
            )

    def pause(self) -> None:
        """Stop sending anything on the websocket (including PONG) without closing: a stalled
        feed. Messages generated meanwhile are dropped, as a real stall loses them."""
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        with self._lock:
            self._paused = False

    @property
    def paused(self) -> bool:
        with self._lock:
            return self._paused

    @property
    def connection_count(self) -> int:
        return len(self._conns)

    def drop_connections(self) -> int:
        """Abort every websocket TCP connection (no close frame: the client sees 1006)."""

        async def drop() -> int:
            conns = list(self._conns)
            for conn in conns:
                conn.writer.transport.abort()
            return len(conns)

        return self._call(drop) or 0

    def send_raw(self, text: str) -> int:
        """Send `text` verbatim as a text frame to every websocket (e.g. malformed JSON)."""

        async def send() -> int:
            return self._broadcast(text, assets=None)

        return self._call(send) or 0

    def replay(self, messages: Iterable[str | Mapping[str, Any]], interval_s: float = 0) -> int:
        """Send a recorded sequence (raw JSON lines or dicts) in order to the subscribers of
        its tokens, applying each message to the served REST state first (so `/book` follows
        the stream). Blocks until done when called from another thread; returns frames sent."""
        items = list(messages)
        return self._call(lambda: self.areplay(items, interval_s), timeout=600) or 0

    async def areplay(
        self, messages: Iterable[str | Mapping[str, Any]], interval_s: float = 0
    ) -> int:
        sent = 0
        for item in messages:
            if isinstance(item, str):
                text = item
                try:
                    message: Any = json.loads(item)
                except ValueError:
                    sent += self._broadcast(text, assets=None)
                    continue
            else:
                message = dict(item)
                text = json.dumps(message, separators=(",", ":"))
            for obj in message if isinstance(message, list) else [message]:
                if isinstance(obj, dict):
                    self._apply_message(obj)
            sent += self._broadcast(
                text,
                assets=_message_assets(message),
                custom_only=_event_type(message) in CUSTOM_EVENTS,
            )
            if interval_s:
                await asyncio.sleep(interval_s)
        return sent

    def resolve_market(
        self,
        condition_id: str,
        winning_token_id: str | None,
        *,
        sources: tuple[str, ...] = ("ws", "clob", "gamma"),
    ) -> dict[str, Any]:
        """Resolve a market everywhere: websocket `market_resolved` (custom-feature subscribers
        of its tokens), CLOB `closed` + winner flags, Gamma `closed` + one-hot outcomePrices +
        umaResolutionStatus "resolved"; the books are removed (/book answers 404). With
        `winning_token_id=None` it resolves 50-50: prices 0.5/0.5, CLOB `is_50_50_outcome`, and
        a market_resolved without a winner (its real shape for 50-50 is not documented).
        `sources` narrows who tells (the socket's message is known not to arrive reliably).
        Returns the market_resolved message (sent only when "ws" is among the sources)."""

        async def resolve() -> dict[str, Any]:
            return self._resolve(condition_id, winning_token_id, frozenset(sources))

        result = self._call(resolve)
        return result if result is not None else {}

    def meta(self) -> dict[str, Any]:
        return {
            "fixtures": str(self.fixtures.path),
            "dataset": self.fixtures.meta or {"synthetic": False, "label": "recorded fixtures"},
            "synthetic_walk": self.walk,
            "synthetic_books": sorted(self.synthetic_tokens),
            "gamma_markets": len(self.gamma),
            "clob_markets": len(self.clob),
            "books": len(self.books),
            "sequences": sorted(self.fixtures.sequences),
            "websocket_connections": len(self._conns),
        }

    # --- Resolution -----------------------------------------------------------------------------
    def _resolve(self, cid: str, winner: str | None, sources: frozenset[str]) -> dict[str, Any]:
        tokens = self.pairs.get(cid)
        if not tokens:
            raise KeyError(f"unknown condition id {cid}")
        if winner is not None and winner not in tokens:
            raise ValueError(f"{winner} is not a token of {cid}")
        prices = ["1" if t == winner else "0" for t in tokens] if winner else ["0.5"] * len(tokens)
        outcomes = _json_list(self.gamma.get(cid, {}).get("outcomes")) or [
            t.get("outcome", "") for t in self.clob.get(cid, {}).get("tokens") or []
        ]
        closed_time = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S+00")
        if cid in self.gamma and "gamma" in sources:
            self.gamma[cid].update(
                closed=True,
                acceptingOrders=False,
                outcomePrices=json.dumps(prices),
                umaResolutionStatus="resolved",
                umaResolutionStatuses=json.dumps(["proposed", "resolved"]),
                closedTime=closed_time,
            )
        if cid in self.clob and "clob" in sources:
            clob = self.clob[cid]
            clob.update(closed=True, accepting_orders=False, is_50_50_outcome=winner is None)
            for token, price in zip(clob.get("tokens") or [], prices, strict=False):
                token["winner"] = token.get("token_id") == winner
                token["price"] = _num(price)
        for token in tokens:
            self.books.pop(token, None)
        self._resolved.add(cid)
        index = tokens.index(winner) if winner else -1
        message = {
            "event_type": "market_resolved",
            "id": str(self.gamma.get(cid, {}).get("id", "")),
            "market": cid,
            "assets_ids": tokens,
            "winning_asset_id": winner or "",
            "winning_outcome": outcomes[index] if winner and index < len(outcomes) else "",
            "timestamp": now_ms(),
            "tags": [],
        }
        if "ws" in sources:
            self._broadcast(
                json.dumps(message, separators=(",", ":")), assets=set(tokens), custom_only=True
            )
        logger.info("fakepoly: resolved %s (winner %s)", cid, winner or "50-50")
        return message

    # --- Websocket ------------------------------------------------------------------------------
    def _broadcast(self, text: str, *, assets: set[str] | None, custom_only: bool = False) -> int:
        """Send to every connection subscribed to one of `assets` (all when None)."""
        sent = 0
        for conn in list(self._conns):
            if assets is not None and not (conn.assets & assets):
                continue
            if custom_only and not conn.custom:
                continue
            if self._send(conn, text):
                sent += 1
        return sent

    def _send(self, conn: _WsConn, text: str) -> bool:
        if self.paused:
            self.frames_dropped += 1
            return False
        try:
            conn.send(text)
        except (ConnectionError, RuntimeError) as exc:
            logger.debug("fakepoly: send failed: %r", exc)
            return False
        self.frames_sent += 1
        return True

    def _snapshot(self, conn: _WsConn, assets: Iterable[str]) -> None:
        books = [self.books[a].ws(snapshot=True) for a in assets if a in self.books]
        if books:
            self._send(conn, json.dumps(books, separators=(",", ":")))

    def _on_text(self, conn: _WsConn, text: str) -> None:
        self.client_frames.append(text)
        if text.strip() == "PING":
            if conn.subscribed:
                self._send(conn, "PONG")
            elif conn.protocol.state is State.OPEN:  # a PING first closes the socket
                conn.protocol.send_close(1008, "subscribe before PING")
                conn.flush()
            return
        try:
            message = json.loads(text)
        except ValueError:
            logger.info("fakepoly: ignoring non-JSON frame %r", text[:80])
            return
        if not isinstance(message, dict):
            return
        raw_ids = message.get("assets_ids", message.get("asset_ids"))
        if not isinstance(raw_ids, list):
            logger.info("fakepoly: ignoring a subscription without assets_ids")
            return
        ids = [str(a) for a in raw_ids]
        if "custom_feature_enabled" in message:
            conn.custom = bool(message["custom_feature_enabled"])
        operation = str(message.get("operation") or "").lower()
        if operation == "unsubscribe":
            conn.assets.difference_update(ids)
        elif operation == "subscribe" or str(message.get("type") or "").lower() == "market":
            conn.subscribed = True
            new = [a for a in dict.fromkeys(ids) if a not in conn.assets]
            conn.assets.update(new)
            if message.get("initial_dump", True):  # `level` 2 is the only book we keep
                self._snapshot(conn, new)

    async def _serve_ws(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> None:
        protocol = ServerProtocol(max_size=1 << 22)
        protocol.receive_data(head)
        request = next((e for e in protocol.events_received() if isinstance(e, Request)), None)
        if request is None:
            writer.close()
            return
        response = protocol.accept(request)
        protocol.send_response(response)
        conn = _WsConn(writer, protocol)
        conn.flush()
        if response.status_code != 101:
            writer.close()
            return
        self._conns.add(conn)
        try:
            while protocol.state is not State.CLOSED:
                data = await reader.read(65536)
                if data:
                    protocol.receive_data(data)
                else:
                    protocol.receive_eof()
                for frame in protocol.events_received():
                    self._on_frame(conn, frame)
                conn.flush()
                if not data or protocol.close_expected():
                    break
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conns.discard(conn)
            writer.close()

    def _on_frame(self, conn: _WsConn, frame: Any) -> None:
        if frame.opcode is Opcode.TEXT:
            conn.fragments = [frame.data]
        elif frame.opcode is Opcode.CONT and conn.fragments:
            conn.fragments.append(frame.data)
        else:
            return  # binary, ping/pong and close are handled by the protocol object
        if frame.fin:
            payload = b"".join(conn.fragments)
            conn.fragments = []
            self._on_text(conn, payload.decode("utf-8", errors="replace"))

    # --- Applying recorded or generated messages to the served state --------------------------
    def _apply_message(self, message: Mapping[str, Any]) -> None:
        kind = message.get("event_type")
        asset = str(message.get("asset_id") or "")
        if kind == "book" and asset:
            book = self.books.get(asset)
            defaults = self._book_defaults(str(message.get("market") or ""))
            if book is not None:
                defaults.update(
                    tick_size=book.tick_size,
                    min_order_size=book.min_order_size,
                    neg_risk=book.neg_risk,
                )
            fresh = FakeBook.from_message(message, defaults)
            if "last_trade_price" not in message and book is not None:
                fresh.last_trade_price = book.last_trade_price
            self.books[asset] = fresh
            self.token_market.setdefault(asset, fresh.market)
            self._record_price(asset, fresh)
        elif kind == "price_change":
            timestamp = str(message.get("timestamp") or now_ms())
            changes = message.get("price_changes")
            if changes is None and asset:  # pre-2025-09 shape
                changes = [{**c, "asset_id": asset} for c in message.get("changes") or []]
            touched: set[str] = set()
            for change in changes or []:
                book = self.books.get(str(change.get("asset_id")))
                if book is None:
                    continue
                side = "bids" if str(change.get("side")).upper() == "BUY" else "asks"
                book.set_level(side, str(change["price"]), str(change["size"]))
                book.timestamp = timestamp
                touched.add(book.asset_id)
            for token in touched:
                self._record_price(token, self.books[token])
        elif kind == "last_trade_price" and asset in self.books:
            self.books[asset].last_trade_price = str(message.get("price") or "")
        elif kind == "tick_size_change" and asset in self.books:
            self.books[asset].tick_size = str(message.get("new_tick_size") or "")

    # --- Synthetic walk -------------------------------------------------------------------------
    def _walkable(self) -> list[str]:
        return [
            cid
            for cid, tokens in self.pairs.items()
            if len(tokens) == 2
            and cid not in self._resolved
            and not self.gamma.get(cid, self.clob.get(cid, {})).get("closed")
            and all(t in self.books for t in tokens)
        ]

    def _seed_synthetic_books(self) -> None:
        """Give open binary markets without a recorded book a SYNTHETIC mirrored pair around
        Gamma's price (labelled: listed in /fakepoly/meta `synthetic_books`)."""
        for cid, tokens in self.pairs.items():
            gamma = self.gamma.get(cid)
            if len(tokens) != 2 or gamma is None or gamma.get("closed"):
                continue
            if not gamma.get("enableOrderBook", True):
                continue
            if all(t in self.books for t in tokens):
                continue
            defaults = self._book_defaults(cid)
            tick = Decimal(defaults["tick_size"])
            first = self.books.get(tokens[0])
            if first is None:
                prices = _json_list(gamma.get("outcomePrices")) or ["0.5"]
                mid = _decimal(prices[0], Decimal("0.5"))
                first = self._synthetic_book(cid, tokens[0], mid, tick, defaults)
                self.books[tokens[0]] = first
                self.synthetic_tokens.add(tokens[0])
            if tokens[1] not in self.books:
                self.books[tokens[1]] = _mirror(first, tokens[1])
                self.synthetic_tokens.add(tokens[1])
            for token in tokens:
                self._record_price(token, self.books[token])

    def _synthetic_book(
        self, cid: str, token: str, mid: Decimal, tick: Decimal, defaults: Mapping[str, Any]
    ) -> FakeBook:
        mid = min(max(_on_tick(mid, tick), tick * 2), 1 - tick * 2)
        book = FakeBook(
            market=cid,
            asset_id=token,
            bids={},
            asks={},
            timestamp=now_ms(),
            tick_size=defaults["tick_size"],
            min_order_size=defaults["min_order_size"],
            neg_risk=defaults["neg_risk"],
        )
        for k in range(1, 9):
            bid, ask = mid - tick * k, mid + tick * k
            if bid >= tick:
                book.bids[fmt(bid)] = self._size()
            if ask <= 1 - tick:
                book.asks[fmt(ask)] = self._size()
        return book

    def _size(self) -> str:
        size = Decimal(self._rng.randint(500, 250000)) / 100
        return fmt(size.quantize(Decimal("0.01")))

    async def _walk_loop(self) -> None:
        while True:
            await asyncio.sleep(self.walk_interval)
            try:
                self._walk_step()
            except Exception:  # a generator bug must not kill the server
                logger.exception("fakepoly: walk step failed")

    def walk_step(self) -> list[dict[str, Any]]:
        """One SYNTHETIC step on a random open market: a resting-order change (price_change
        with both mirrored entries) or, about one step in eight, a trade (last_trade_price for
        both tokens, then each token's post-trade book). Thread-safe; the walk task calls it
        every `walk_interval`. Returns the messages sent."""
        if self._loop is None:
            self._seed_synthetic_books()
            return self._walk_step()

        async def step() -> list[dict[str, Any]]:
            self._seed_synthetic_books()
            return self._walk_step()

        return self._call(step) or []

    def _walk_step(self) -> list[dict[str, Any]]:
        markets = self._walkable()
        if not markets:
            return []
        cid = self._rng.choice(markets)
        a, b = self.pairs[cid]
        book_a, book_b = self.books[a], self.books[b]
        tick = Decimal(book_a.tick_size)
        timestamp = now_ms()
        if self._rng.random() < 0.125 and (book_a.asks or book_a.bids):
            messages = self._walk_trade(cid, book_a, book_b, timestamp)
        else:
            messages = self._walk_quote(cid, book_a, book_b, tick, timestamp)
        for message in messages:
            self._broadcast(
                json.dumps(message, separators=(",", ":")), assets=_message_assets(message)
            )
        self._record_price(a, book_a)
        self._record_price(b, book_b)
        return messages

    def _walk_quote(
        self, cid: str, book_a: FakeBook, book_b: FakeBook, tick: Decimal, timestamp: str
    ) -> list[dict[str, Any]]:
        side = self._rng.choice(("bids", "asks"))
        best_bid = book_a.best("bids") or tick
        best_ask = book_a.best("asks") or 1 - tick
        if side == "bids":
            low, high = max(tick, best_bid - tick * 4), min(best_bid + tick, best_ask - tick)
        else:
            low, high = max(best_ask - tick, best_bid + tick), min(1 - tick, best_ask + tick * 4)
        if high < low:
            side, low, high = "bids", max(tick, best_bid - tick * 4), best_bid
        steps = int((high - low) / tick)
        price = low + tick * self._rng.randint(0, max(steps, 0))
        levels = book_a.bids if side == "bids" else book_a.asks
        cancel = fmt(price) in levels and len(levels) > 3 and self._rng.random() < 0.35
        size = "0" if cancel else self._size()
        mirror_side = "asks" if side == "bids" else "bids"
        mirror_price = 1 - price
        book_a.set_level(side, fmt(price), size)
        book_b.set_level(mirror_side, fmt(mirror_price), size)
        book_a.timestamp = book_b.timestamp = timestamp
        return [
            {
                "market": cid,
                "price_changes": [
                    _change(book_a, fmt(price), size, side),
                    _change(book_b, fmt(mirror_price), size, mirror_side),
                ],
                "timestamp": timestamp,
                "event_type": "price_change",
            }
        ]

    def _walk_trade(
        self, cid: str, book_a: FakeBook, book_b: FakeBook, timestamp: str
    ) -> list[dict[str, Any]]:
        taker = "BUY" if book_a.asks and (not book_a.bids or self._rng.random() < 0.5) else "SELL"
        side = "asks" if taker == "BUY" else "bids"
        price_key = book_a.best_str(side)
        available = Decimal((book_a.asks if side == "asks" else book_a.bids)[price_key])
        size = min(available, Decimal(self._rng.randint(500, 50000)) / 100).quantize(
            Decimal("0.01")
        )
        remaining = fmt(available - size) if available > size else "0"
        price = Decimal(price_key)
        mirror_side = "bids" if side == "asks" else "asks"
        book_a.set_level(side, price_key, remaining)
        book_b.set_level(mirror_side, fmt(1 - price), remaining)
        book_a.last_trade_price, book_b.last_trade_price = fmt(price), fmt(1 - price)
        book_a.timestamp = book_b.timestamp = timestamp
        trades = [
            {
                "asset_id": book.asset_id,
                "event_type": "last_trade_price",
                "fee_rate_bps": "0",
                "market": cid,
                "price": book.last_trade_price,
                "side": trade_side,
                "size": fmt(size),
                "timestamp": timestamp,
                "transaction_hash": "0x" + hashlib.sha256(f"{cid}{timestamp}".encode()).hexdigest(),
            }
            for book, trade_side in ((book_a, taker), (book_b, "SELL" if taker == "BUY" else "BUY"))
        ]
        return [*trades, book_a.ws(snapshot=False), book_b.ws(snapshot=False)]

    # --- HTTP -----------------------------------------------------------------------------------
    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._writers.add(writer)
        try:
            await self._serve_http(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except Exception:
            logger.exception("fakepoly: connection handler failed")
        finally:
            self._writers.discard(writer)
            if not writer.is_closing():
                writer.close()

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            except asyncio.LimitOverrunError:
                self._write(writer, 431, {"error": "headers too large"}, close=True)
                return
            lines = head.decode("latin-1").split("\r\n")
            try:
                method, target, version = lines[0].split(" ", 2)
            except ValueError:
                self._write(writer, 400, {"error": "bad request line"}, close=True)
                return
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            path = urlsplit(target).path
            if headers.get("upgrade", "").lower() == "websocket":
                if path.rstrip("/") == "/ws/market":
                    self._writers.discard(writer)
                    await self._serve_ws(reader, writer, head)
                    return
                self._write(writer, 404, {"error": "no websocket here"}, close=True)
                return
            if "transfer-encoding" in headers:
                self._write(writer, 501, {"error": "chunked bodies unsupported"}, close=True)
                return
            length = int(headers.get("content-length") or 0)
            body = await reader.readexactly(length) if length else b""
            with self._lock:
                self.requests.append((method, target))
            status, payload, extra = self._dispatch(method, target, body)
            close = (
                headers.get("connection", "").lower() == "close" or version.strip() == "HTTP/1.0"
            )
            self._write(writer, status, payload, close=close, extra=extra)
            await writer.drain()
            if close:
                return

    def _write(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: Any,
        *,
        close: bool = False,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        head = [
            f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            f"Connection: {'close' if close else 'keep-alive'}",
            *(f"{k}: {v}" for k, v in (extra or {}).items()),
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    def _dispatch(self, method: str, target: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        split = urlsplit(target)
        path = unquote(split.path).rstrip("/") or "/"
        query = parse_qs(split.query, keep_blank_values=True)
        with self._lock:
            for failure in self._failures:
                if failure.remaining > 0 and path.startswith(failure.prefix):
                    failure.remaining -= 1
                    self._failures = [f for f in self._failures if f.remaining > 0]
                    return failure.status, {"error": failure.message}, {}
        try:
            if path == "/fakepoly/meta":
                return 200, self.meta(), {}
            if path == "/gamma" or path.startswith("/gamma/"):
                return self._gamma(method, path.removeprefix("/gamma") or "/", query)
            if path == "/clob" or path.startswith("/clob/"):
                return self._clob(method, path.removeprefix("/clob") or "/", query, body)
        except _HttpError as exc:
            return exc.status, {"error": exc.message}, {}
        return 404, {"error": f"not found: {path}"}, {}

    # Gamma -------------------------------------------------------------------------------------
    def _gamma(
        self, method: str, path: str, query: Mapping[str, list[str]]
    ) -> tuple[int, Any, dict[str, str]]:
        if method != "GET":
            raise _HttpError(405, "method not allowed")
        parts = path.strip("/").split("/")
        kind = parts[0]
        sunset = {"Sunset": "Fri, 01 May 2026 00:00:00 GMT", "Deprecation": "true"}
        if kind in ("markets", "events"):
            if len(parts) == 2 and parts[1] == "keyset":
                with self._lock:
                    enabled = self._keyset_enabled
                if not enabled:
                    raise _HttpError(404, "not found")
                return 200, self._keyset(kind, query), {}
            if len(parts) == 1:
                return 200, self._legacy(kind, query), sunset
            if len(parts) == 3 and parts[1] == "slug":
                return 200, self._gamma_one(kind, slug=parts[2]), {}
            if len(parts) == 2:
                return 200, self._gamma_one(kind, ident=parts[1]), {}
        if kind == "public-search" and len(parts) == 1:
            return 200, self._search(_qs_first(query, "q") or ""), {}
        raise _HttpError(404, "not found")

    def _gamma_markets(
        self, query: Mapping[str, list[str]], *, legacy: bool
    ) -> list[dict[str, Any]]:
        closed = _bool_param(_qs_first(query, "closed"))
        if closed is None and legacy:
            closed = False  # the legacy endpoint's implicit default
        active = _bool_param(_qs_first(query, "active"))
        ids = set(_qs_list(query, "id"))
        slugs = set(_qs_list(query, "slug"))
        cids = set(_qs_list(query, "condition_ids"))
        tokens = set(_qs_list(query, "clob_token_ids"))
        result = []
        for cid, market in self.gamma.items():
            if closed is not None and bool(market.get("closed")) != closed:
                continue
            if active is not None and bool(market.get("active", True)) != active:
                continue
            if ids and str(market.get("id")) not in ids:
                continue
            if slugs and market.get("slug") not in slugs:
                continue
            if cids and cid not in cids:
                continue
            if tokens and not tokens & set(self.pairs.get(cid, [])):
                continue
            result.append(market)
        return _ordered(result, query)

    def _gamma_events(
        self, query: Mapping[str, list[str]], *, legacy: bool
    ) -> list[dict[str, Any]]:
        closed = _bool_param(_qs_first(query, "closed"))
        if closed is None and legacy:
            closed = False
        ids = set(_qs_list(query, "id"))
        slugs = set(_qs_list(query, "slug"))
        result = []
        for eid in self.events:
            event = self._event(eid)
            if closed is not None and bool(event.get("closed")) != closed:
                continue
            if (ids and eid not in ids) or (slugs and event.get("slug") not in slugs):
                continue
            result.append(event)
        return _ordered(result, query)

    def _event(self, eid: str) -> dict[str, Any]:
        markets = [
            {k: v for k, v in self.gamma[cid].items() if k != "events"}
            for cid in self.event_markets.get(eid, [])
            if cid in self.gamma
        ]
        return {**self.events[eid], "markets": markets}

    def _keyset(self, kind: str, query: Mapping[str, list[str]]) -> dict[str, Any]:
        if "offset" in query:
            raise _HttpError(400, "offset is not supported on keyset endpoints; use after_cursor")
        maximum = KEYSET_MARKETS_MAX if kind == "markets" else KEYSET_EVENTS_MAX
        limit = _int_param(query, "limit", maximum)
        if not 0 < limit <= maximum:
            raise _HttpError(400, f"limit must be between 1 and {maximum}")
        items = (
            self._gamma_markets(query, legacy=False)
            if kind == "markets"
            else self._gamma_events(query, legacy=False)
        )
        start = 0
        cursor = _qs_first(query, "after_cursor")
        if cursor:
            start = _decode_cursor(cursor, kind)
        page = items[start : start + limit]
        body: dict[str, Any] = {kind: page}
        if start + limit < len(items):
            body["next_cursor"] = _encode_cursor(kind, start + limit)
        return body

    def _legacy(self, kind: str, query: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        limit = _int_param(query, "limit", 20)
        offset = _int_param(query, "offset", 0)
        items = (
            self._gamma_markets(query, legacy=True)
            if kind == "markets"
            else self._gamma_events(query, legacy=True)
        )
        return items[offset : offset + max(limit, 0)]

    def _gamma_one(self, kind: str, *, ident: str = "", slug: str = "") -> dict[str, Any]:
        if kind == "markets":
            for market in self.gamma.values():
                if (ident and str(market.get("id")) == ident) or (
                    slug and market.get("slug") == slug
                ):
                    return market
        else:
            for eid, event in self.events.items():
                if (ident and eid == ident) or (slug and event.get("slug") == slug):
                    return self._event(eid)
        raise _HttpError(404, "not found")

    def _search(self, q: str) -> dict[str, Any]:
        needle = q.strip().lower()
        found = []
        for eid, event in self.events.items():
            texts = [str(event.get("title", "")), str(event.get("slug", ""))] + [
                str(self.gamma[c].get("question", ""))
                for c in self.event_markets.get(eid, [])
                if c in self.gamma
            ]
            if needle and any(needle in t.lower() for t in texts):
                found.append(self._event(eid))
        return {"events": found, "pagination": {"hasMore": False, "totalResults": len(found)}}

    # CLOB --------------------------------------------------------------------------------------
    def _clob(
        self, method: str, path: str, query: Mapping[str, list[str]], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        if method == "POST" and path == "/books":
            try:
                items = json.loads(body or b"[]")
            except ValueError as exc:
                raise _HttpError(400, "Invalid payload") from exc
            if not isinstance(items, list):
                raise _HttpError(400, "Invalid payload")
            if len(items) > 500:
                raise _HttpError(400, "Too many token ids; the limit is 500")
            ids = [str(i.get("token_id")) for i in items if isinstance(i, dict)]
            self.books_requested.append(tuple(ids))
            return 200, [self.books[t].rest() for t in ids if t in self.books], {}
        if method != "GET":
            raise _HttpError(405, "method not allowed")
        parts = path.strip("/").split("/")
        token = _qs_first(query, "token_id") or ""
        if path in ("/", "/ok"):
            return 200, "OK", {}
        if path == "/time":
            return 200, int(time.time()), {}
        if path == "/book":
            return 200, self._book(token).rest(), {}
        if path == "/midpoint":
            mid = self._book(token).mid()
            return 200, {"mid": fmt(mid) if mid is not None else "0"}, {}
        if path == "/spread":
            book = self._book(token)
            bid, ask = book.best("bids"), book.best("asks")
            return (
                200,
                {"spread": fmt(ask - bid) if bid is not None and ask is not None else "0"},
                {},
            )
        if path == "/last-trade-price":
            return 200, {"price": self._book(token).last_trade_price or "0", "side": ""}, {}
        if path == "/tick-size":
            return 200, {"minimum_tick_size": _num(self._tick(token))}, {}
        if path == "/neg-risk":
            if token in self.books:
                return 200, {"neg_risk": self.books[token].neg_risk}, {}
            return 200, {"neg_risk": bool(self._clob_market_of(token).get("neg_risk"))}, {}
        if path == "/fee-rate":
            market = self._clob_market_of(token)
            return 200, {"base_fee": market.get("taker_base_fee", 0) or 0}, {}
        if path == "/prices-history":
            return 200, {"history": self._history(query)}, {}
        if path == "/markets":
            return 200, self._clob_page(_qs_first(query, "next_cursor") or "MA=="), {}
        if len(parts) == 2 and parts[0] == "markets":
            if parts[1] not in self.clob:
                raise _HttpError(404, "market not found")
            return 200, self.clob[parts[1]], {}
        if len(parts) == 2 and parts[0] == "clob-markets":
            compact = self._compact(parts[1])
            if compact is None:
                raise _HttpError(404, "market not found")
            return 200, compact, {}
        if len(parts) == 2 and parts[0] == "markets-by-token":
            cid = self.token_market.get(parts[1])
            if not cid:
                raise _HttpError(404, "market not found")
            return 200, {"condition_id": cid}, {}
        raise _HttpError(404, "not found")

    def _book(self, token: str) -> FakeBook:
        if not token or not token.isdigit():
            raise _HttpError(400, "Invalid token id")
        book = self.books.get(token)
        if book is None:
            raise _HttpError(404, "No orderbook exists for the requested token id")
        return book

    def _clob_market_of(self, token: str) -> dict[str, Any]:
        if not token:
            raise _HttpError(400, "Invalid token id")
        cid = self.token_market.get(token)
        if cid is None:
            raise _HttpError(404, "market not found")
        return self.clob.get(cid) or {"condition_id": cid, "neg_risk": False}

    def _tick(self, token: str) -> str:
        if token in self.books:
            return self.books[token].tick_size
        market = self._clob_market_of(token)
        tick = market.get("minimum_tick_size")
        if tick is None:
            raise _HttpError(404, "market not found")
        return str(tick)

    def _history(self, query: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        token = _qs_first(query, "market") or ""
        points = self.history.get(token, [])  # a condition id silently gives [] (as live)
        if not points:
            return []
        end = int(_qs_first(query, "endTs") or points[-1][0])
        start = _qs_first(query, "startTs")
        windows = {"1m": 60, "1h": 3600, "6h": 21600, "1d": 86400, "1w": 604800}
        interval = _qs_first(query, "interval")
        begin = int(start) if start else (end - windows[interval] if interval in windows else 0)
        fidelity = int(_qs_first(query, "fidelity") or 0) * 60
        result: list[dict[str, Any]] = []
        for t, p in points:
            if begin <= t <= end and (not result or t - result[-1]["t"] >= fidelity):
                result.append({"t": t, "p": p})
        return result

    def _clob_page(self, cursor: str) -> dict[str, Any]:
        if cursor == CLOB_END_CURSOR:
            return {"data": [], "next_cursor": CLOB_END_CURSOR, "limit": CLOB_PAGE, "count": 0}
        try:
            offset = int(base64.b64decode(cursor).decode())
        except (ValueError, binascii.Error) as exc:
            raise _HttpError(400, "invalid next_cursor") from exc
        markets = list(self.clob.values())[offset : offset + CLOB_PAGE]
        following = offset + CLOB_PAGE
        next_cursor = (
            base64.b64encode(str(following).encode()).decode()
            if following < len(self.clob)
            else CLOB_END_CURSOR
        )
        return {
            "data": markets,
            "next_cursor": next_cursor,
            "limit": CLOB_PAGE,
            "count": len(markets),
        }


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- Helpers ------------------------------------------------------------------------------------
def _json_list(value: Any) -> list[Any] | None:
    if isinstance(value, list):
        return value
    if isinstance(value, str) and value.strip():
        try:
            decoded = json.loads(value)
        except ValueError:
            return None
        return decoded if isinstance(decoded, list) else None
    return None


def _decimal(value: Any, default: Decimal) -> Decimal:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return default


def _on_tick(price: Decimal, tick: Decimal) -> Decimal:
    return (price / tick).quantize(Decimal(1), rounding=ROUND_HALF_EVEN) * tick


def _mirror(book: FakeBook, asset_id: str) -> FakeBook:
    """The complementary token's book: a bid at p is an ask at 1−p (Polymarket mirrors
    liquidity across the pair)."""
    return FakeBook(
        market=book.market,
        asset_id=asset_id,
        bids={fmt(1 - Decimal(p)): s for p, s in book.asks.items()},
        asks={fmt(1 - Decimal(p)): s for p, s in book.bids.items()},
        timestamp=book.timestamp,
        tick_size=book.tick_size,
        min_order_size=book.min_order_size,
        neg_risk=book.neg_risk,
        last_trade_price=fmt(1 - Decimal(book.last_trade_price)) if book.last_trade_price else "",
    )


def _change(book: FakeBook, price: str, size: str, side: str) -> dict[str, str]:
    """A price_change entry: `hash` is the token's book hash after the change (§1.4)."""
    return {
        "asset_id": book.asset_id,
        "price": price,
        "size": size,
        "side": "BUY" if side == "bids" else "SELL",
        "hash": book.hash(),
        "best_bid": book.best_str("bids"),
        "best_ask": book.best_str("asks"),
    }


def _event_type(message: Any) -> str | None:
    if isinstance(message, dict):
        return message.get("event_type")
    return None


def _message_assets(message: Any) -> set[str]:
    """The tokens a market-channel message concerns (whose subscribers receive it)."""
    assets: set[str] = set()
    for obj in message if isinstance(message, list) else [message]:
        if not isinstance(obj, dict):
            continue
        if obj.get("asset_id"):
            assets.add(str(obj["asset_id"]))
        for change in obj.get("price_changes") or []:
            if isinstance(change, dict) and change.get("asset_id"):
                assets.add(str(change["asset_id"]))
        for key in ("assets_ids", "asset_ids", "clob_token_ids"):
            assets.update(str(a) for a in obj.get(key) or [])
    return assets


def _ordered(items: list[dict[str, Any]], query: Mapping[str, list[str]]) -> list[dict[str, Any]]:
    order = _qs_first(query, "order")
    if not order:
        return items
    ascending = _bool_param(_qs_first(query, "ascending")) is True

    def key(item: dict[str, Any]) -> Decimal:
        return _decimal(item.get(order) or 0, Decimal(0))

    return sorted(items, key=key, reverse=not ascending)


def _int_param(query: Mapping[str, list[str]], name: str, default: int) -> int:
    value = _qs_first(query, name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise _HttpError(400, f"{name} must be an integer") from exc


def _encode_cursor(kind: str, offset: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{offset}".encode()).decode()


def _decode_cursor(cursor: str, kind: str) -> int:
    try:
        prefix, offset = base64.urlsafe_b64decode(cursor.encode()).decode().split(":")
        if prefix != kind:
            raise ValueError(prefix)
        return int(offset)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise _HttpError(400, "invalid after_cursor") from exc
