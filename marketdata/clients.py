"""Polymarket REST clients on httpx: Gamma (discovery) and the CLOB's public reads.

One `httpx.Client` per client object (connection reuse), explicit timeouts, and bounded retries
with capped exponential backoff and full jitter on transport errors, 429 (honouring
Retry-After, capped) and 5xx. Any other non-2xx answer raises `PolymarketError(status,
message)` with the server's `{"error": msg}` text. Nothing here invents data: every value
returned came from the server.

Shapes (polymarket.md §2): Gamma encodes outcomes / outcomePrices / clobTokenIds /
umaResolutionStatuses as JSON strings; they are decoded into lists here. Book objects from the
CLOB are returned exactly as sent (price and size strings untouched) because the book hash is
computed over those strings.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any, Self

import httpx
import orjson
from django.conf import settings

from marketdata.resolution import GAMMA_JSON_STRING_FIELDS, decimal_or_none, json_list

logger = logging.getLogger("polysim.marketdata.clients")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
GAMMA_MARKETS_PAGE_MAX = 100
GAMMA_EVENTS_PAGE_MAX = 500
GAMMA_CONDITION_IDS_MAX = 100
CLOB_BOOKS_MAX = 500
# Cursor values that mean "no more pages" (Gamma: absent/empty; CLOB lists: "LTE=" = -1).
END_CURSORS = frozenset({"", "LTE="})


class PolymarketError(Exception):
    """A Polymarket API answered with an error (or could not be reached: status 0)."""

    def __init__(self, status: int, message: str, *, url: str = "") -> None:
        self.status = status
        self.message = message
        self.url = url
        super().__init__(f"{status} {message}" + (f" ({url})" if url else ""))


class _HttpClient:
    """Shared transport: base URL, timeouts, bounded retries with jittered backoff."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 4.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            headers={"User-Agent": "polysim-marketdata/1", "Accept": "application/json"},
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _delay(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), self.max_backoff)
            except ValueError:
                pass
        # Full jitter (AWS "Exponential Backoff And Jitter"): uniform in [0, capped exp].
        return random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | list[tuple[str, Any]] | None = None,
        json: Any = None,
    ) -> Any:
        """Send one logical request (retried up to `retries` times) and decode the JSON body.
        A 2xx body that is not JSON (CLOB `GET /` answers "OK") comes back as text."""
        url = f"{self.base_url}{path}"
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    method,
                    path,
                    params=params,  # type: ignore[arg-type]
                    content=orjson.dumps(json) if json is not None else None,
                    headers={"Content-Type": "application/json"} if json is not None else None,
                )
            except httpx.TransportError as exc:
                if attempt >= self.retries:
                    raise PolymarketError(0, f"unreachable: {exc!r}", url=url) from exc
                delay = self._delay(attempt)
                logger.warning("%s %s failed (%r); retry in %.2fs", method, url, exc, delay)
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return _decode(response)
                if status not in RETRY_STATUSES or attempt >= self.retries:
                    raise PolymarketError(status, _error_message(response), url=url)
                delay = self._delay(attempt, response.headers.get("Retry-After"))
                logger.warning("%s %s answered %s; retry in %.2fs", method, url, status, delay)
            attempt += 1
            self._sleep(delay)

    def get(self, path: str, **params: Any) -> Any:
        return self.request(
            "GET", path, params={k: _param(v) for k, v in params.items() if v is not None}
        )


def _param(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _decode(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text


def _error_message(response: httpx.Response) -> str:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            if body.get(key):
                return str(body[key])
    return str(body)[:500]


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- Gamma -------------------------------------------------------------------------------------
def decode_gamma_market(market: Mapping[str, Any]) -> dict[str, Any]:
    """A Gamma market with its JSON-in-string arrays decoded into lists (absent stays absent,
    undecodable strings become None)."""
    decoded = dict(market)
    for name in GAMMA_JSON_STRING_FIELDS:
        if name in decoded:
            decoded[name] = json_list(decoded[name])
    return decoded


def decode_gamma_event(event: Mapping[str, Any]) -> dict[str, Any]:
    decoded = dict(event)
    if isinstance(decoded.get("markets"), list):
        decoded["markets"] = [
            decode_gamma_market(m) for m in decoded["markets"] if isinstance(m, Mapping)
        ]
    return decoded


def _page(body: Any, key: str) -> tuple[list[dict[str, Any]], str | None]:
    """Items and next cursor from a bare array or a `{markets|events|data, next_cursor}`
    envelope."""
    if isinstance(body, list):
        return [item for item in body if isinstance(item, dict)], None
    if isinstance(body, dict):
        items = body.get(key)
        if items is None:
            items = body.get("data")
        cursor = body.get("next_cursor")
        return [i for i in (items or []) if isinstance(i, dict)], (
            str(cursor) if cursor is not None else None
        )
    raise PolymarketError(200, f"unexpected response shape: {type(body).__name__}")


class GammaClient(_HttpClient):
    """Gamma discovery. Lists use the keyset endpoints and fall back, once per client, to the
    legacy offset endpoints when keyset answers 404 (older deployments, offline fakes).

    `closed=None` means "open and closed": the legacy list endpoints apply `closed=false` by an
    implicit default, so both values are asked for explicitly, open first.
    """

    def __init__(self, base_url: str | None = None, **kwargs: Any) -> None:
        super().__init__(base_url or settings.POLYMARKET_GAMMA_URL, **kwargs)
        self._legacy: set[str] = set()  # "markets" / "events" once keyset answered 404

    # Lists -------------------------------------------------------------------------------------
    def iter_markets(
        self,
        *,
        closed: bool | None = False,
        limit: int | None = None,
        page_size: int = GAMMA_MARKETS_PAGE_MAX,
        **filters: Any,
    ) -> Iterator[dict[str, Any]]:
        """Markets, decoded, at most `limit` in total. Extra keyword filters (e.g. order,
        ascending, tag_id, condition_ids, clob_token_ids) are passed through."""
        yield from self._iter(
            "markets",
            closed=closed,
            limit=limit,
            page_size=min(page_size, GAMMA_MARKETS_PAGE_MAX),
            filters=filters,
            decode=decode_gamma_market,
        )

    def iter_events(
        self,
        *,
        closed: bool | None = False,
        limit: int | None = None,
        page_size: int = GAMMA_EVENTS_PAGE_MAX,
        **filters: Any,
    ) -> Iterator[dict[str, Any]]:
        """Events (with their nested markets decoded), at most `limit` in total."""
        yield from self._iter(
            "events",
            closed=closed,
            limit=limit,
            page_size=min(page_size, GAMMA_EVENTS_PAGE_MAX),
            filters=filters,
            decode=decode_gamma_event,
        )

    def _iter(
        self,
        kind: str,
        *,
        closed: bool | None,
        limit: int | None,
        page_size: int,
        filters: Mapping[str, Any],
        decode: Callable[[Mapping[str, Any]], dict[str, Any]],
    ) -> Iterator[dict[str, Any]]:
        remaining = limit
        for closed_value in (False, True) if closed is None else (closed,):
            if remaining is not None and remaining <= 0:
                return
            for item in self._iter_one(kind, closed_value, page_size, filters):
                yield decode(item)
                if remaining is not None:
                    remaining -= 1
                    if remaining <= 0:
                        return

    def _iter_one(
        self, kind: str, closed: bool, page_size: int, filters: Mapping[str, Any]
    ) -> Iterator[dict[str, Any]]:
        params = [(k, _param(v)) for k, v in _flatten(filters)] + [("closed", _param(closed))]
        if kind not in self._legacy:
            try:
                yield from self._keyset(kind, params, page_size)
                return
            except PolymarketError as exc:
                if exc.status != 404:
                    raise
                logger.warning("Gamma /%s/keyset answered 404; using legacy /%s", kind, kind)
                self._legacy.add(kind)
        yield from self._legacy_pages(kind, params, page_size)

    def _keyset(
        self, kind: str, params: list[tuple[str, Any]], page_size: int
    ) -> Iterator[dict[str, Any]]:
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            page_params = [*params, ("limit", page_size)]
            if cursor:
                page_params.append(("after_cursor", cursor))
            body = self.request("GET", f"/{kind}/keyset", params=page_params)
            items, cursor = _page(body, kind)
            yield from items
            if not items or cursor is None or cursor in END_CURSORS or cursor in seen:
                return
            seen.add(cursor)

    def _legacy_pages(
        self, kind: str, params: list[tuple[str, Any]], page_size: int
    ) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            body = self.request(
                "GET", f"/{kind}", params=[*params, ("limit", page_size), ("offset", offset)]
            )
            items, _ = _page(body, kind)
            yield from items
            if len(items) < page_size:
                return
            offset += len(items)

    # Single items ------------------------------------------------------------------------------
    def get_market(self, market_id: str | int) -> dict[str, Any]:
        return decode_gamma_market(self.get(f"/markets/{market_id}"))

    def get_market_by_slug(self, slug: str) -> dict[str, Any]:
        return decode_gamma_market(self.get(f"/markets/slug/{slug}"))

    def get_event(self, event_id: str | int) -> dict[str, Any]:
        return decode_gamma_event(self.get(f"/events/{event_id}"))

    def markets_by_condition_ids(
        self, condition_ids: Iterable[str], *, closed: bool | None = None
    ) -> list[dict[str, Any]]:
        """Markets for these condition ids (≤100 per request; open and closed by default)."""
        ids = list(dict.fromkeys(condition_ids))
        found: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(ids, GAMMA_CONDITION_IDS_MAX):
            for market in self.iter_markets(
                closed=closed, page_size=GAMMA_MARKETS_PAGE_MAX, condition_ids=chunk
            ):
                found.setdefault(str(market.get("conditionId")), market)
        return [found[cid] for cid in ids if cid in found]

    def public_search(self, query: str, **params: Any) -> dict[str, Any]:
        body = self.get("/public-search", q=query, **params)
        if not isinstance(body, dict):
            raise PolymarketError(200, "unexpected public-search shape")
        body = dict(body)
        body["events"] = [
            decode_gamma_event(e) for e in body.get("events") or [] if isinstance(e, Mapping)
        ]
        return body


def _flatten(filters: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """Query pairs; list values become repeated parameters (condition_ids=a&condition_ids=b)."""
    for key, value in filters.items():
        if value is None:
            continue
        if isinstance(value, list | tuple | set):
            for item in value:
                yield key, item
        else:
            yield key, value


# --- CLOB --------------------------------------------------------------------------------------
class ClobClient(_HttpClient):
    """The CLOB's public (L0) reads."""

    def __init__(self, base_url: str | None = None, **kwargs: Any) -> None:
        super().__init__(base_url or settings.POLYMARKET_CLOB_URL, **kwargs)

    def book(self, token_id: str) -> dict[str, Any]:
        """`GET /book`: the full summary, exact strings, bids ascending / asks descending."""
        return self._dict(self.get("/book", token_id=token_id))

    def books(self, token_ids: Iterable[str]) -> list[dict[str, Any]]:
        """`POST /books` in chunks of ≤500 tokens."""
        result: list[dict[str, Any]] = []
        for chunk in _chunks(list(dict.fromkeys(token_ids)), CLOB_BOOKS_MAX):
            body = self.request("POST", "/books", json=[{"token_id": t} for t in chunk])
            if not isinstance(body, list):
                raise PolymarketError(200, "POST /books did not return an array")
            result.extend(b for b in body if isinstance(b, dict))
        return result

    def market(self, condition_id: str) -> dict[str, Any]:
        """`GET /markets/{condition_id}`: tokens (with winner flags), tick, min size, flags."""
        return self._dict(self.get(f"/markets/{condition_id}"))

    def clob_market(self, condition_id: str) -> dict[str, Any]:
        """`GET /clob-markets/{condition_id}` (V2 compact info): `t`, `mts`, `nr`, `fd{r,e}`."""
        return self._dict(self.get(f"/clob-markets/{condition_id}"))

    def markets_page(self, next_cursor: str = "MA==") -> dict[str, Any]:
        """`GET /markets?next_cursor=`: `{data, next_cursor, limit, count}`; the end is "LTE="."""
        return self._dict(self.get("/markets", next_cursor=next_cursor))

    def tick_size(self, token_id: str) -> Decimal:
        body = self._dict(self.get("/tick-size", token_id=token_id))
        return self._decimal(body, "minimum_tick_size")

    def neg_risk(self, token_id: str) -> bool:
        return bool(self._dict(self.get("/neg-risk", token_id=token_id)).get("neg_risk"))

    def fee_rate(self, token_id: str) -> Decimal:
        """`GET /fee-rate` → `base_fee` in bps. V1-era: a signed cap, not the fee charged
        (the V2 taker fee comes from Gamma feeSchedule or `clob_market()["fd"]`)."""
        return self._decimal(self._dict(self.get("/fee-rate", token_id=token_id)), "base_fee")

    def prices_history(
        self,
        token_id: str,
        *,
        interval: str | None = None,
        start_ts: int | None = None,
        end_ts: int | None = None,
        fidelity: int | None = None,
    ) -> list[tuple[int, Decimal]]:
        """`GET /prices-history` for a TOKEN id (a condition id silently returns nothing) as
        (unix seconds, price) pairs."""
        body = self._dict(
            self.get(
                "/prices-history",
                market=token_id,
                interval=interval,
                startTs=start_ts,
                endTs=end_ts,
                fidelity=fidelity,
            )
        )
        points: list[tuple[int, Decimal]] = []
        for point in body.get("history") or []:
            price = decimal_or_none(point.get("p")) if isinstance(point, dict) else None
            if price is not None and point.get("t") is not None:
                points.append((int(point["t"]), price))
        return points

    def server_time(self) -> int:
        body = self.get("/time")
        if isinstance(body, bool) or not isinstance(body, int | str):
            raise PolymarketError(200, f"unexpected /time body: {body!r}")
        return int(body)

    def ok(self) -> bool:
        return self.get("/ok") is not None

    @staticmethod
    def _dict(body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise PolymarketError(200, f"expected a JSON object, got {type(body).__name__}")
        return body

    @staticmethod
    def _decimal(body: Mapping[str, Any], key: str) -> Decimal:
        value = decimal_or_none(body.get(key))
        if value is None:
            raise PolymarketError(200, f"missing or invalid {key!r}: {body.get(key)!r}")
        return value
