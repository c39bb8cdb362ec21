"""Market reads of the native trader API, /v1/*: markets (list, detail), a token's live book
and its price history (proxied from the CLOB). Views derive from core.api.views.TraderApiView
(a trader key or the session, the per-user rate limit); they only translate HTTP ↔ the
market-data selectors, the price bus and the CLOB client, and never build error bodies."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from core import errors
from core.api.fields import (
    DecimalTextField,
    IsoDateTimeField,
    MoneyField,
    PriceField,
)
from core.api.params import query_choice, query_int, query_required
from core.api.schema import CURSOR_ERRORS, ERROR_BODY, PAGE_PARAMS, QUERY_ERRORS, page_serializer
from core.api.schema import TRADER_COMMON_ERRORS as COMMON_ERRORS
from core.api.schema import TRADER_NOT_FOUND as NOT_FOUND
from core.api.shapes import Shape, With
from core.api.views import TraderApiView
from core.clock import from_ms
from core.pagination import keyset_page, parse_limit
from marketdata import states as market_states
from marketdata.bus import BookTop, get_bus, latest_many_live
from marketdata.clients import ClobClient, PolymarketError
from marketdata.models import Market, Token
from marketdata.selectors import MARKET_SORTS, MARKET_STATUSES, TokenTop, market_search
from marketdata.watchlist import watch

# Polymarket's /prices-history windows ("1m" is one month, "max" everything).
PRICE_HISTORY_INTERVALS = ("1m", "1w", "1d", "6h", "1h", "max")
PRICE_HISTORY_DEFAULT_INTERVAL = "1d"
PRICE_HISTORY_MAX_FIDELITY = 10_080  # minutes (one week)
# A trader waits on this call: one quick retry, then SERVICE_UNAVAILABLE.
UPSTREAM_TIMEOUT_S = 5.0
UPSTREAM_RETRIES = 1


@dataclass(frozen=True)
class TokenQuote(TokenTop):
    """A token with its live top of book, if any: what TokenQuoteOutput renders."""

    @property
    def price_as_of(self) -> dt.datetime | None:
        top = self.top
        return None if top is None else from_ms(top.timestamp_ms or top.published_at)


@dataclass(frozen=True)
class TokenBook:
    """A token and its published book: what BookOutput renders."""

    token: Token
    top: BookTop

    @property
    def condition_id(self) -> str:
        return self.top.market or self.token.market.condition_id

    @property
    def bids(self) -> list[dict[str, str]]:
        return [{"price": p, "size": s} for p, s in self.top.bids]

    @property
    def asks(self) -> list[dict[str, str]]:
        return [{"price": p, "size": s} for p, s in self.top.asks]

    @property
    def timestamp(self) -> dt.datetime | None:
        return from_ms(self.top.timestamp_ms)

    @property
    def published_at(self) -> dt.datetime | None:
        return from_ms(self.top.published_at)


# --- Output shapes: each serializer is the shape's one declaration (the OpenAPI schema, and
# the body through its Shape, core.api.shapes). Prices from the bus are already exact
# decimal strings (DecimalTextField sends them as they are).
class TokenQuoteOutput(serializers.Serializer):
    token_id = serializers.CharField(source="token.token_id")
    outcome = serializers.CharField(source="token.outcome")
    index = serializers.IntegerField(source="token.index")
    best_bid = DecimalTextField(source="top.best_bid", allow_null=True)
    best_ask = DecimalTextField(source="top.best_ask", allow_null=True)
    mid = DecimalTextField(source="top.mid", allow_null=True)
    spread = DecimalTextField(source="top.spread", allow_null=True)
    last_trade_price = DecimalTextField(source="top.last_trade_price", allow_null=True)
    tick_size = DecimalTextField(
        source="top.tick_size", allow_null=True, help_text="Live tick from the book, if any"
    )
    fresh = serializers.BooleanField(help_text="False without a live, healthy book")
    price_as_of = IsoDateTimeField(allow_null=True)


class EventRefOutput(serializers.Serializer):
    slug = serializers.CharField()
    title = serializers.CharField()


class MarketOutput(serializers.Serializer):
    condition_id = serializers.CharField()
    question = serializers.CharField()
    slug = serializers.CharField()
    category = serializers.CharField()
    group_item_title = serializers.CharField()
    event = EventRefOutput(allow_null=True)
    status = serializers.ChoiceField(choices=Market.Status.choices)
    accepting_orders = serializers.BooleanField()
    end_date = IsoDateTimeField(allow_null=True)
    volume = MoneyField()
    volume_24hr = MoneyField()
    liquidity = MoneyField()
    tick_size = PriceField(allow_null=True)
    min_order_size = PriceField(allow_null=True)
    neg_risk = serializers.BooleanField()
    tokens = TokenQuoteOutput(many=True)


class FeesOutput(serializers.Serializer):
    enabled = serializers.BooleanField(source="fees_enabled")
    type = serializers.CharField(source="fee_type")
    rate = PriceField(source="fee_rate", allow_null=True)
    exponent = PriceField(source="fee_exponent", allow_null=True)
    taker_only = serializers.BooleanField(source="fee_taker_only")


class ResolutionOutput(serializers.Serializer):
    state = serializers.CharField()
    winning_token_id = serializers.CharField(source="winning_token.token_id", allow_null=True)
    winning_outcome = serializers.CharField()
    payouts = serializers.DictField(child=DecimalTextField())
    detected_at = IsoDateTimeField()


class MarketDetailOutput(MarketOutput):
    question_id = serializers.CharField()
    neg_risk_market_id = serializers.CharField()
    closed = serializers.BooleanField()
    closed_time = IsoDateTimeField(allow_null=True)
    uma_resolution_status = serializers.CharField()
    fees = FeesOutput(source="*")
    resolution = ResolutionOutput(allow_null=True)


class BookLevelOutput(serializers.Serializer):
    price = DecimalTextField()
    size = DecimalTextField()


class BookOutput(serializers.Serializer):
    token_id = serializers.CharField(source="token.token_id")
    condition_id = serializers.CharField()
    outcome = serializers.CharField(source="token.outcome")
    market_status = serializers.CharField(source="token.market.status")
    bids = BookLevelOutput(many=True, help_text="Best (highest) first")
    asks = BookLevelOutput(many=True, help_text="Best (lowest) first")
    best_bid = DecimalTextField(source="top.best_bid", allow_null=True)
    best_ask = DecimalTextField(source="top.best_ask", allow_null=True)
    mid = DecimalTextField(source="top.mid", allow_null=True)
    spread = DecimalTextField(source="top.spread", allow_null=True)
    last_trade_price = DecimalTextField(source="top.last_trade_price", allow_null=True)
    last_trade_side = serializers.CharField(source="top.last_trade_side", allow_null=True)
    tick_size = DecimalTextField(source="top.tick_size", allow_null=True)
    timestamp = IsoDateTimeField(allow_null=True, help_text="The exchange's book time")
    timestamp_ms = serializers.IntegerField(source="top.timestamp_ms", allow_null=True)
    hash = serializers.CharField(source="top.hash")
    fresh = serializers.BooleanField(source="top.fresh")
    published_at = IsoDateTimeField()


class PricePointOutput(serializers.Serializer):
    t = serializers.IntegerField(help_text="Unix seconds")
    p = PriceField()


class PricesHistoryOutput(serializers.Serializer):
    token_id = serializers.CharField()
    interval = serializers.CharField(allow_null=True)
    fidelity = serializers.IntegerField(allow_null=True)
    history = PricePointOutput(many=True)


MARKET = Shape(MarketOutput)
MARKET_DETAIL = Shape(MarketDetailOutput)
BOOK = Shape(BookOutput)
PRICES_HISTORY = Shape(PricesHistoryOutput)


def _tokens_of(market: Market, tops: dict[str, BookTop]) -> list[TokenQuote]:
    tokens = sorted(market.tokens.all(), key=lambda t: t.index)
    return [TokenQuote(t, tops.get(t.token_id)) for t in tokens]


def market_body(market: Market, tops: dict[str, BookTop]) -> dict[str, Any]:
    """A market as MarketOutput declares it, with its tokens' live quotes from `tops`."""
    return MARKET.render(With(market, tokens=_tokens_of(market, tops)))


def market_detail_body(market: Market, tops: dict[str, BookTop]) -> dict[str, Any]:
    return MARKET_DETAIL.render(
        With(
            market,
            tokens=_tokens_of(market, tops),
            resolution=getattr(market, "resolution", None),
        )
    )


def _live_tops(markets: Iterable[Market]) -> dict[str, BookTop]:
    """The latest tops of every token of `markets` (ONE round trip for the tops, one heartbeat
    read per shard), `fresh` meaning live: a dead feed's books do not show as healthy."""
    token_ids = [t.token_id for m in markets for t in m.tokens.all()]
    return latest_many_live(get_bus(), token_ids) if token_ids else {}


def _token_or_404(token_id: str) -> Token:
    token = Token.objects.select_related("market").filter(token_id=token_id).first()
    if token is None:
        raise errors.NotFound()
    return token


# --- Markets ----------------------------------------------------------------------------------
class MarketListApi(TraderApiView):
    @extend_schema(
        operation_id="markets_list",
        parameters=[
            OpenApiParameter("q", str, description="Search in the question and slug"),
            OpenApiParameter("category", str, description="Exact category (case-insensitive)"),
            OpenApiParameter("status", str, enum=list(MARKET_STATUSES), description="default open"),
            OpenApiParameter(
                "sort",
                str,
                enum=list(MARKET_SORTS),
                description="volume (default, biggest first) or ending_soon (future end dates, "
                "soonest first)",
            ),
            *PAGE_PARAMS,
        ],
        responses={
            200: page_serializer("MarketPage", MarketOutput),
            **COMMON_ERRORS,
            **CURSOR_ERRORS,
            **QUERY_ERRORS,
        },
        description="Markets with their outcome tokens and live best bid/ask/mid from the price "
        "feed (`fresh` false when there is no healthy live book).",
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        q = (params.get("q") or "").strip()[:200]
        category = (params.get("category") or "").strip()[:64]
        status = query_choice(params, "status", MARKET_STATUSES, market_states.OPEN)
        sort = query_choice(params, "sort", MARKET_SORTS, "volume")
        qs, fields = market_search(q=q, category=category, status=status, sort=sort)
        # The cursor is bound to this exact query: another filter's cursor is INVALID_CURSOR.
        query_key = json.dumps([sort, status, category.lower(), q], separators=(",", ":"))
        scope = "markets:" + hashlib.sha256(query_key.encode()).hexdigest()[:16]
        page = keyset_page(
            qs,
            scope=scope,
            fields=fields,
            cursor=params.get("cursor"),
            limit=parse_limit(params.get("limit")),
        )
        tops = _live_tops(page.items)
        return Response(
            {
                "data": [market_body(m, tops) for m in page.items],
                "next_cursor": page.next_cursor,
                "has_more": page.has_more,
            }
        )


class MarketDetailApi(TraderApiView):
    @extend_schema(
        operation_id="markets_get",
        responses={200: MarketDetailOutput, **COMMON_ERRORS, **NOT_FOUND},
        description="One market: trading rules (tick size, minimum size, fees), lifecycle "
        "status, resolution if any, and live quotes. Opening an open market asks the feed to "
        "stream its books.",
    )
    def get(self, request: Request, condition_id: str) -> Response:
        market = (
            Market.objects.select_related("event", "resolution__winning_token")
            .prefetch_related("tokens")
            .filter(condition_id=condition_id)
            .first()
        )
        if market is None:
            raise errors.NotFound()
        if market.is_tradable:
            watch(t.token_id for t in market.tokens.all())
        return Response(market_detail_body(market, _live_tops([market])))


class BookApi(TraderApiView):
    @extend_schema(
        operation_id="book_get",
        parameters=[OpenApiParameter("token_id", str, required=True)],
        responses={
            200: BookOutput,
            **COMMON_ERRORS,
            **QUERY_ERRORS,
            **NOT_FOUND,
            503: OpenApiResponse(
                ERROR_BODY,
                description="MARKET_NOT_READY: no book yet; the feed was asked to stream it "
                "(Retry-After)",
            ),
        },
        description="The token's live top of book from the price feed: top levels, best "
        "bid/ask, mid, spread, last trade, tick size, the exchange timestamp and book hash. "
        "`fresh` false means the feed knows the book may be wrong (orders would be refused).",
    )
    def get(self, request: Request) -> Response:
        token = _token_or_404(query_required(request.query_params, "token_id"))
        if token.market.is_tradable:
            watch([token.token_id])  # a book a trader opens becomes live
        top, live = get_bus().latest_live(token.token_id)
        if top is not None and top.fresh and not live:
            top = top.with_fresh(False, published_at=top.published_at)  # the feed stopped beating
        if top is None:
            raise errors.BookNotReady(
                details={"token_id": token.token_id, "market_status": token.market.status},
                headers={"Retry-After": "1"},
            )
        return Response(BOOK.render(TokenBook(token, top)))


class PricesHistoryApi(TraderApiView):
    @extend_schema(
        operation_id="prices_history",
        parameters=[
            OpenApiParameter("token_id", str, required=True),
            OpenApiParameter(
                "interval",
                str,
                enum=list(PRICE_HISTORY_INTERVALS),
                description=f"Window ending now (1m = one month); default "
                f"{PRICE_HISTORY_DEFAULT_INTERVAL}. Ignored when start_ts is given.",
            ),
            OpenApiParameter("fidelity", int, description="Resolution in minutes"),
            OpenApiParameter("start_ts", int, description="Unix seconds"),
            OpenApiParameter("end_ts", int, description="Unix seconds"),
        ],
        responses={
            200: PricesHistoryOutput,
            **COMMON_ERRORS,
            **QUERY_ERRORS,
            **NOT_FOUND,
            503: OpenApiResponse(ERROR_BODY, description="SERVICE_UNAVAILABLE: upstream error"),
        },
        description="Price history of one outcome token, proxied from Polymarket's CLOB.",
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        token = _token_or_404(query_required(params, "token_id"))
        fidelity = query_int(params, "fidelity", low=1, high=PRICE_HISTORY_MAX_FIDELITY)
        start_ts = query_int(params, "start_ts", low=0, high=2**40)
        end_ts = query_int(params, "end_ts", low=0, high=2**40)
        interval: str | None = None
        if start_ts is None:
            interval = query_choice(
                params, "interval", PRICE_HISTORY_INTERVALS, PRICE_HISTORY_DEFAULT_INTERVAL
            )
        try:
            with ClobClient(timeout=UPSTREAM_TIMEOUT_S, retries=UPSTREAM_RETRIES) as clob:
                points = clob.prices_history(
                    token.token_id,
                    interval=interval,
                    start_ts=start_ts,
                    end_ts=end_ts,
                    fidelity=fidelity,
                )
        except PolymarketError as exc:
            raise errors.ServiceUnavailable(
                "Price history is unavailable right now; retry later.",
                details={"upstream_status": exc.status},
            ) from exc
        history = {
            "token_id": token.token_id,
            "interval": interval,
            "fidelity": fidelity,
            "history": [{"t": t, "p": p} for t, p in points],
        }
        return Response(PRICES_HISTORY.render(history))
