"""The native trader API, /v1/* (issue #4): what bots call and what the web UI uses.

Every view derives from TraderApiView, which applies, in order: credentials (a personal trader
API key `tk_…` in `Authorization: Bearer` or `X-API-Key`, else the Django session — with CSRF
enforced on unsafe methods, since a browser sends the session cookie on its own) → the per-user
rate limit → the view. Errors are the partner API's envelope (core.errors / core.exceptions).
A trader only ever reaches their own accounts (trading.permissions): another user's account is
the same NOT_FOUND as a missing one. Views only translate HTTP ↔ selectors and services; they
never build error bodies.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import orjson
from django.db.models import F, Q, QuerySet
from django.utils import timezone
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Account, User
from core import errors
from core.api.fields import (
    CleanTextField,
    IsoDateTimeField,
    MoneyField,
    PriceField,
    StrictInputSerializer,
    iso_utc,
)
from core.api.responses import PlainJSONResponse
from core.api.schema import ERROR_BODY, page_serializer, schema_postprocess_for
from core.api.views import TraderApiView
from core.money import wire
from core.pagination import keyset_page, parse_limit
from marketdata import states as market_states
from marketdata.bus import BookTop, get_bus, latest_many_live
from marketdata.clients import ClobClient, PolymarketError
from marketdata.models import Market, Token
from marketdata.watchlist import watch
from partners.apis import (
    AccountEnvelopeOutput,
    PositionOutput,
    TradeOutput,
    envelope_body,
)
from trading import states as order_states
from trading.models import Fill, Order, Side
from trading.permissions import (
    account_for_trader,
)
from trading.selectors import (
    account_equity,
    account_state,
    fill_feed_page,
    positions_liquidation,
)
from trading.services import order_cancel, order_cancel_account, order_cancel_market, order_place
from trading.services.orders import STORED_REJECTIONS

# Polymarket's /prices-history windows ("1m" is one month, "max" everything).
PRICE_HISTORY_INTERVALS = ("1m", "1w", "1d", "6h", "1h", "max")
PRICE_HISTORY_DEFAULT_INTERVAL = "1d"
PRICE_HISTORY_MAX_FIDELITY = 10_080  # minutes (one week)
# A trader waits on this call: one quick retry, then SERVICE_UNAVAILABLE.
UPSTREAM_TIMEOUT_S = 5.0
UPSTREAM_RETRIES = 1
MARKET_SORTS = ("volume", "ending_soon")
MARKET_STATUSES = (*(s.value for s in Market.Status), "all")

_LISTED_ABOVE = (errors.AccountClosed, errors.ValidationFailed)
# The codes this API can answer with (the schema lists them; clients branch on them).
TRADER_ERROR_CODES: tuple[type[errors.DomainError], ...] = (
    errors.MissingCredentials,
    errors.InvalidApiKey,
    errors.CsrfFailed,
    errors.NotFound,
    errors.MethodNotAllowed,
    errors.MalformedJson,
    errors.ValidationFailed,
    errors.InvalidCursor,
    errors.AccountClosed,
    errors.TenantDisabled,
    errors.BookNotReady,
    # The order engine's codes (trading-engine.md §2; ACCOUNT_CLOSED and VALIDATION_FAILED
    # are above). MARKET_NOT_READY is listed twice on purpose: 503 on a book read, 422 on an
    # order.
    *(e for e in errors.ENGINE_ERROR_CODES if e not in _LISTED_ABOVE),
    order_states.IllegalTransition,
    errors.IdempotencyKeyReused,
    errors.IdempotencyKeyInUse,
    errors.RateLimitExceeded,
    errors.ServiceUnavailable,
    errors.InternalError,
)


_iso = iso_utc


def _iso_ms(value: int | None) -> str | None:
    return None if value is None else _iso(dt.datetime.fromtimestamp(value / 1000, dt.UTC))


# --- Schema pieces --------------------------------------------------------------------------
COMMON_ERRORS = {
    401: OpenApiResponse(ERROR_BODY, description="MISSING_CREDENTIALS or INVALID_API_KEY"),
    403: OpenApiResponse(ERROR_BODY, description="CSRF_FAILED (session callers, unsafe methods)"),
    429: OpenApiResponse(ERROR_BODY, description="RATE_LIMIT_EXCEEDED (Retry-After)"),
}
NOT_FOUND = {404: OpenApiResponse(ERROR_BODY, description="NOT_FOUND (also: not yours)")}
PAGE_PARAMS = [
    OpenApiParameter("limit", int, description="1–500, default 100"),
    OpenApiParameter("cursor", str, description="Opaque next_cursor from the previous page"),
]


# --- Output shapes (documentation; bodies are built by the *_body functions below) -----------
class TokenQuoteOutput(serializers.Serializer):
    token_id = serializers.CharField()
    outcome = serializers.CharField()
    index = serializers.IntegerField()
    best_bid = PriceField(allow_null=True)
    best_ask = PriceField(allow_null=True)
    mid = PriceField(allow_null=True)
    spread = PriceField(allow_null=True)
    last_trade_price = PriceField(allow_null=True)
    tick_size = PriceField(allow_null=True, help_text="Live tick from the book, if any")
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
    enabled = serializers.BooleanField()
    type = serializers.CharField()
    rate = PriceField(allow_null=True)
    exponent = PriceField(allow_null=True)
    taker_only = serializers.BooleanField()


class ResolutionOutput(serializers.Serializer):
    state = serializers.CharField()
    winning_token_id = serializers.CharField(allow_null=True)
    winning_outcome = serializers.CharField()
    payouts = serializers.DictField(child=PriceField())
    detected_at = IsoDateTimeField()


class MarketDetailOutput(MarketOutput):
    question_id = serializers.CharField()
    neg_risk_market_id = serializers.CharField()
    closed = serializers.BooleanField()
    closed_time = IsoDateTimeField(allow_null=True)
    uma_resolution_status = serializers.CharField()
    fees = FeesOutput()
    resolution = ResolutionOutput(allow_null=True)


class BookLevelOutput(serializers.Serializer):
    price = PriceField()
    size = PriceField()


class BookOutput(serializers.Serializer):
    token_id = serializers.CharField()
    condition_id = serializers.CharField()
    outcome = serializers.CharField()
    market_status = serializers.CharField()
    bids = BookLevelOutput(many=True, help_text="Best (highest) first")
    asks = BookLevelOutput(many=True, help_text="Best (lowest) first")
    best_bid = PriceField(allow_null=True)
    best_ask = PriceField(allow_null=True)
    mid = PriceField(allow_null=True)
    spread = PriceField(allow_null=True)
    last_trade_price = PriceField(allow_null=True)
    last_trade_side = serializers.CharField(allow_null=True)
    tick_size = PriceField(allow_null=True)
    timestamp = IsoDateTimeField(allow_null=True, help_text="The exchange's book time")
    timestamp_ms = serializers.IntegerField(allow_null=True)
    hash = serializers.CharField()
    fresh = serializers.BooleanField()
    published_at = IsoDateTimeField()


class TraderAccountOutput(serializers.Serializer):
    account_id = serializers.UUIDField()
    kind = serializers.ChoiceField(choices=["personal", "tenant"])
    managed_by = serializers.CharField(allow_null=True, help_text="The firm's name, if any")
    external_id = serializers.CharField(allow_null=True)
    stage = serializers.CharField(allow_null=True)
    status = serializers.CharField()
    trading_enabled = serializers.BooleanField(
        help_text="False when the account is closed or its firm suspended trading"
    )
    epoch = serializers.IntegerField()
    starting_balance = MoneyField()
    balance = MoneyField()
    available_balance = MoneyField()
    equity = MoneyField()
    created_at = IsoDateTimeField()


# --- Bodies -----------------------------------------------------------------------------------
def _quote_body(token: Token, top: BookTop | None) -> dict[str, Any]:
    if top is None:
        return {
            "token_id": token.token_id,
            "outcome": token.outcome,
            "index": token.index,
            "best_bid": None,
            "best_ask": None,
            "mid": None,
            "spread": None,
            "last_trade_price": None,
            "tick_size": None,
            "fresh": False,
            "price_as_of": None,
        }
    return {
        "token_id": token.token_id,
        "outcome": token.outcome,
        "index": token.index,
        "best_bid": top.best_bid,
        "best_ask": top.best_ask,
        "mid": top.mid,
        "spread": top.spread,
        "last_trade_price": top.last_trade_price,
        "tick_size": top.tick_size,
        "fresh": top.fresh,
        "price_as_of": _iso_ms(top.timestamp_ms or top.published_at),
    }


def _tokens_of(market: Market) -> list[Token]:
    return sorted(market.tokens.all(), key=lambda t: t.index)


def market_body(market: Market, tops: dict[str, BookTop]) -> dict[str, Any]:
    """A market as MarketOutput documents it, with its tokens' live quotes from `tops`."""
    event = market.event
    return {
        "condition_id": market.condition_id,
        "question": market.question,
        "slug": market.slug,
        "category": market.category,
        "group_item_title": market.group_item_title,
        "event": {"slug": event.slug, "title": event.title} if event is not None else None,
        "status": market.status,
        "accepting_orders": market.accepting_orders,
        "end_date": _iso(market.end_date),
        "volume": wire(market.volume),
        "volume_24hr": wire(market.volume_24hr),
        "liquidity": wire(market.liquidity),
        "tick_size": wire(market.tick_size, min_places=0),
        "min_order_size": wire(market.min_order_size, min_places=0),
        "neg_risk": market.neg_risk,
        "tokens": [_quote_body(t, tops.get(t.token_id)) for t in _tokens_of(market)],
    }


def market_detail_body(market: Market, tops: dict[str, BookTop]) -> dict[str, Any]:
    resolution = getattr(market, "resolution", None)
    body = market_body(market, tops)
    body.update(
        question_id=market.question_id,
        neg_risk_market_id=market.neg_risk_market_id,
        closed=market.closed,
        closed_time=_iso(market.closed_time),
        uma_resolution_status=market.uma_resolution_status,
        fees={
            "enabled": market.fees_enabled,
            "type": market.fee_type,
            "rate": wire(market.fee_rate, min_places=0),
            "exponent": wire(market.fee_exponent, min_places=0),
            "taker_only": market.fee_taker_only,
        },
        resolution=None
        if resolution is None
        else {
            "state": resolution.state,
            "winning_token_id": resolution.winning_token.token_id
            if resolution.winning_token_id
            else None,
            "winning_outcome": resolution.winning_outcome,
            "payouts": dict(resolution.payouts or {}),
            "detected_at": _iso(resolution.detected_at),
        },
    )
    return body


def book_body(token: Token, top: BookTop) -> dict[str, Any]:
    return {
        "token_id": token.token_id,
        "condition_id": top.market or token.market.condition_id,
        "outcome": token.outcome,
        "market_status": token.market.status,
        "bids": [{"price": p, "size": s} for p, s in top.bids],
        "asks": [{"price": p, "size": s} for p, s in top.asks],
        "best_bid": top.best_bid,
        "best_ask": top.best_ask,
        "mid": top.mid,
        "spread": top.spread,
        "last_trade_price": top.last_trade_price,
        "last_trade_side": top.last_trade_side,
        "tick_size": top.tick_size,
        "timestamp": _iso_ms(top.timestamp_ms),
        "timestamp_ms": top.timestamp_ms,
        "hash": top.hash,
        "fresh": top.fresh,
        "published_at": _iso_ms(top.published_at),
    }


def trader_account_body(account: Account) -> dict[str, Any]:
    tenant = account.tenant
    tradable = not account.is_closed and (tenant is None or tenant.enabled)
    return {
        "account_id": str(account.pk),
        "kind": "personal" if tenant is None else "tenant",
        "managed_by": tenant.name if tenant is not None else None,
        "external_id": account.external_id,
        "stage": account.stage,
        "status": account.status,
        "trading_enabled": tradable,
        "epoch": account.epoch,
        "starting_balance": wire(account.starting_balance),
        "balance": wire(account.cash),
        "available_balance": wire(account.available_cash),
        "equity": wire(account_equity(account=account)),
        "created_at": _iso(account.created_at),
    }


def _live_tops(markets: Iterable[Market]) -> dict[str, BookTop]:
    """The latest tops of every token of `markets` (ONE round trip for the tops, one heartbeat
    read per shard), `fresh` meaning live: a dead feed's books do not show as healthy."""
    token_ids = [t.token_id for m in markets for t in m.tokens.all()]
    return latest_many_live(get_bus(), token_ids) if token_ids else {}


def _choice(params: Any, name: str, allowed: Iterable[str], default: str) -> str:
    value = params.get(name) or default
    allowed = tuple(allowed)
    if value not in allowed:
        raise errors.ValidationFailed(details={name: [f"One of: {', '.join(allowed)}."]})
    return str(value)


def _int_param(params: Any, name: str, *, low: int, high: int) -> int | None:
    raw = params.get(name)
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise errors.ValidationFailed(details={name: [f"An integer from {low} to {high}."]})
    return value


def _required(params: Any, name: str) -> str:
    value = (params.get(name) or "").strip()
    if not value:
        raise errors.ValidationFailed(details={name: ["This parameter is required."]})
    return str(value)


def _token_or_404(token_id: str) -> Token:
    token = Token.objects.select_related("market").filter(token_id=token_id).first()
    if token is None:
        raise errors.NotFound()
    return token


# --- Markets ----------------------------------------------------------------------------------
def market_search(
    *, q: str, category: str, status: str, sort: str
) -> tuple[QuerySet[Market], tuple[str, ...]]:
    """The filtered market queryset and its keyset fields (ascending, last one unique)."""
    qs = Market.objects.select_related("event").prefetch_related("tokens")
    if q:
        qs = qs.filter(Q(question__icontains=q) | Q(slug__icontains=q))
    if category:
        qs = qs.filter(category__iexact=category)
    if status != "all":
        qs = qs.filter(status=status)
    if sort == "ending_soon":
        qs = qs.filter(end_date__isnull=False, end_date__gt=timezone.now())
        return qs, ("end_date", "id")
    # Biggest first through an ascending keyset on −volume (keyset_page only walks upwards).
    return qs.annotate(neg_volume=-F("volume")), ("neg_volume", "id")


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
        responses={200: page_serializer("MarketPage", MarketOutput), **COMMON_ERRORS},
        description="Markets with their outcome tokens and live best bid/ask/mid from the price "
        "feed (`fresh` false when there is no healthy live book).",
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        q = (params.get("q") or "").strip()[:200]
        category = (params.get("category") or "").strip()[:64]
        status = _choice(params, "status", MARKET_STATUSES, market_states.OPEN)
        sort = _choice(params, "sort", MARKET_SORTS, "volume")
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
        token = _token_or_404(_required(request.query_params, "token_id"))
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
        return Response(book_body(token, top))


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
            200: inline_serializer(
                "PricesHistory",
                fields={
                    "token_id": serializers.CharField(),
                    "interval": serializers.CharField(allow_null=True),
                    "fidelity": serializers.IntegerField(allow_null=True),
                    "history": inline_serializer(
                        "PricePoint",
                        fields={"t": serializers.IntegerField(), "p": PriceField()},
                        many=True,
                    ),
                },
            ),
            **COMMON_ERRORS,
            **NOT_FOUND,
            503: OpenApiResponse(ERROR_BODY, description="SERVICE_UNAVAILABLE: upstream error"),
        },
        description="Price history of one outcome token, proxied from Polymarket's CLOB.",
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        token = _token_or_404(_required(params, "token_id"))
        fidelity = _int_param(params, "fidelity", low=1, high=PRICE_HISTORY_MAX_FIDELITY)
        start_ts = _int_param(params, "start_ts", low=0, high=2**40)
        end_ts = _int_param(params, "end_ts", low=0, high=2**40)
        interval: str | None = None
        if start_ts is None:
            interval = _choice(
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
        return Response(
            {
                "token_id": token.token_id,
                "interval": interval,
                "fidelity": fidelity,
                "history": [{"t": t, "p": wire(p, min_places=0)} for t, p in points],
            }
        )


# --- Accounts ---------------------------------------------------------------------------------
class AccountListApi(TraderApiView):
    @extend_schema(
        operation_id="accounts_list",
        responses={
            200: inline_serializer(
                "TraderAccountList", fields={"data": TraderAccountOutput(many=True)}
            ),
            **COMMON_ERRORS,
        },
        description="The caller's accounts: the personal one and those firms opened for them, "
        "oldest first.",
    )
    def get(self, request: Request) -> Response:
        accounts = (
            Account.objects.filter(owner=self.user)
            .select_related("tenant")
            .order_by("created_at", "id")
        )
        return Response({"data": [trader_account_body(a) for a in accounts]})


class TraderPositionOutput(PositionOutput):
    liquidation_value = MoneyField(
        allow_null=True,
        help_text="What selling the whole position into the live bids would yield now, "
        "walking the published bid levels best-first, after taker fees (docs/fill-model.md); "
        "shares beyond the published depth add nothing. null without a live book.",
    )


class TraderAccountEnvelopeOutput(AccountEnvelopeOutput):
    """The partner envelope, plus each position's liquidation value beside its mark."""

    positions = TraderPositionOutput(many=True)


class AccountDetailApi(TraderApiView):
    @extend_schema(
        operation_id="accounts_get",
        responses={200: TraderAccountEnvelopeOutput, **COMMON_ERRORS, **NOT_FOUND},
        description="The account-state envelope, the partner API's shape plus "
        "`positions[].liquidation_value` beside each mark.",
    )
    def get(self, request: Request, account_id: str) -> Response:
        account = account_for_trader(user=self.user, account_id=account_id)
        state = account_state(account_id=account.pk, tenant=account.tenant, owner_id=self.user.pk)
        if state is None:  # gone between the two reads
            raise errors.NotFound()
        body = envelope_body(state)
        liquidation = positions_liquidation(state["positions"])
        for position in body["positions"]:
            position["liquidation_value"] = wire(liquidation.get(position["token_id"]))
        return Response(body)


class TradeListApi(TraderApiView):
    @extend_schema(
        operation_id="trades_list",
        parameters=[
            OpenApiParameter("account_id", str, required=True),
            OpenApiParameter("epoch", int),
            *PAGE_PARAMS,
        ],
        responses={
            200: page_serializer("TraderTradePage", TradeOutput),
            **COMMON_ERRORS,
            **NOT_FOUND,
        },
        description="The account's fills and settlements, ascending and append-only (as the "
        "partner trades feed). next_cursor is always returned: store it and poll with it.",
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        account = account_for_trader(user=self.user, account_id=_required(params, "account_id"))
        page = fill_feed_page(
            account=account,
            cursor=params.get("cursor"),
            limit=parse_limit(params.get("limit")),
            epoch=_int_param(params, "epoch", low=0, high=2**31),
        )
        return Response(
            {
                "data": [trade_body(f) for f in page.fills],
                "next_cursor": page.next_cursor,
                "has_more": page.has_more,
            }
        )


# --- Orders -----------------------------------------------------------------------------------
ORDER_STATUSES = tuple(Order.Status.values)
# Bounds that only keep Decimal arithmetic finite; every business rule on price, size and
# amount (tick, minimum size, decimals, > 0) is the engine's, so its codes reach the client.
ORDER_PRICE_MAX = Decimal("1000")
ORDER_QUANTITY_MAX = Decimal("1000000000000")
ORDER_FILTER_MAX_LENGTH = 100

IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="Optional, 1–255 printable ASCII characters, scoped to you (all your keys "
    "and your session). Same key + same request (method, path with query, body) → the first "
    "2xx status and body replayed with `Idempotent-Replayed: true`; same key + different "
    "request → 422 IDEMPOTENCY_KEY_REUSED; while the first is still running → 409 "
    "IDEMPOTENCY_KEY_IN_USE. Errors are not recorded (a retry runs again). Kept "
    "IDEMPOTENCY_TTL_HOURS.",
)
IDEMPOTENCY_ERRORS = {
    409: OpenApiResponse(ERROR_BODY, description="IDEMPOTENCY_KEY_IN_USE"),
    422: OpenApiResponse(ERROR_BODY, description="IDEMPOTENCY_KEY_REUSED, VALIDATION_FAILED"),
}
ENGINE_ERRORS = {
    400: OpenApiResponse(
        ERROR_BODY,
        description="INVALID_ORDER_MIN_TICK_SIZE, INVALID_ORDER_MIN_SIZE, "
        "INVALID_ORDER_EXPIRATION, INVALID_POST_ONLY_ORDER_TYPE, MALFORMED_JSON",
    ),
    403: OpenApiResponse(ERROR_BODY, description="CSRF_FAILED, TENANT_DISABLED"),
    409: OpenApiResponse(ERROR_BODY, description="ACCOUNT_CLOSED, IDEMPOTENCY_KEY_IN_USE"),
    422: OpenApiResponse(
        ERROR_BODY,
        description="VALIDATION_FAILED, IDEMPOTENCY_KEY_REUSED, INVALID_ORDER_DUPLICATED, "
        "INVALID_ORDER_NOT_ENOUGH_BALANCE, INSUFFICIENT_POSITION, INVALID_POST_ONLY_ORDER, "
        "FOK_ORDER_NOT_FILLED_ERROR, MARKET_CLOSED, MARKET_NOT_READY",
    ),
    503: OpenApiResponse(ERROR_BODY, description="STALE_BOOK (taker orders paused)"),
}


class OrderOutput(serializers.Serializer):
    id = serializers.UUIDField()
    account_id = serializers.UUIDField()
    token_id = serializers.CharField()
    market_id = serializers.CharField(help_text="The market's condition id")
    side = serializers.ChoiceField(choices=Side.values)
    type = serializers.ChoiceField(choices=Order.Type.values)
    time_in_force = serializers.ChoiceField(choices=Order.TimeInForce.values)
    post_only = serializers.BooleanField()
    price = PriceField(help_text="Limit price; for market orders the worst acceptable price")
    size = PriceField(allow_null=True, help_text="Shares (limit orders and market SELLs)")
    amount = MoneyField(allow_null=True, help_text="Cash to spend (market BUYs)")
    status = serializers.ChoiceField(choices=Order.Status.values)
    reason = serializers.CharField(help_text="Why it left `live` (e.g. USER, EXPIRED), or ''")
    filled_size = PriceField()
    filled_notional = MoneyField()
    fees_paid = MoneyField()
    reserved_cash = MoneyField(help_text="Cash held for the resting remainder (BUY)")
    reserved_shares = PriceField(help_text="Shares held for the resting remainder (SELL)")
    client_order_id = serializers.CharField(allow_null=True)
    expiration = serializers.IntegerField(allow_null=True, help_text="GTD: unix seconds")
    created_at = IsoDateTimeField()
    updated_at = IsoDateTimeField()


class OrderDetailOutput(OrderOutput):
    fills = TradeOutput(many=True, help_text="Its fills, as GET /v1/trades lists them")


def order_body(order: Order) -> dict[str, Any]:
    """An order as OrderOutput documents it."""
    return {
        "id": str(order.pk),
        "account_id": str(order.account_id),
        "token_id": order.token_id,
        "market_id": order.market_id,
        "side": order.side,
        "type": order.type,
        "time_in_force": order.time_in_force,
        "post_only": order.post_only,
        "price": wire(order.price, min_places=0),
        "size": wire(order.size, min_places=0),
        "amount": wire(order.amount),
        "status": order.status,
        "reason": order.reason,
        "filled_size": wire(order.filled_size, min_places=0),
        "filled_notional": wire(order.filled_notional),
        "fees_paid": wire(order.fees_paid),
        "reserved_cash": wire(order.reserved_cash),
        "reserved_shares": wire(order.reserved_shares, min_places=0),
        "client_order_id": order.client_order_id,
        "expiration": int(order.expiration.timestamp()) if order.expiration else None,
        "created_at": _iso(order.created_at),
        "updated_at": _iso(order.updated_at),
    }


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def trade_body(fill: Fill) -> dict[str, Any]:
    """A fill exactly as TradeOutput renders it (tests compare the two), without DRF's
    per-call serializer construction: the order placement response carries its fills."""
    return {
        "trade_id": _text(fill.id),
        "kind": _text(fill.kind),
        "order_id": _text(fill.order_id),
        "account_id": _text(fill.account_id),
        "epoch": None if fill.epoch is None else int(fill.epoch),
        "market_id": _text(fill.market_id),
        "token_id": _text(fill.token_id),
        "market_question": _text(fill.market_question),
        "outcome": _text(fill.outcome),
        "side": _text(fill.side),
        "price": wire(fill.price, min_places=0),
        "size": wire(fill.size, min_places=0),
        "notional": wire(fill.notional),
        "fee": wire(fill.fee),
        "fee_rate_bps": wire(fill.fee_rate_bps, min_places=0),
        "liquidity": _text(fill.liquidity),
        "realized_pnl": wire(fill.realized_pnl),
        "price_source": _text(fill.price_source),
        "book_as_of": _iso(fill.book_as_of),
        "filled_at": _iso(fill.filled_at),
    }


def order_detail_body(order: Order, fills: Iterable[Fill] | None = None) -> dict[str, Any]:
    """OrderDetailOutput: the order and its fills (read from the database unless given)."""
    if fills is None:
        fills = order.fills.order_by("seq")
    return {**order_body(order), "fills": [trade_body(f) for f in fills]}


def _order_for_trader(*, user: User, order_id: str) -> Order:
    """The order if its account belongs to `user`; NotFound otherwise (malformed, missing or
    someone else's: indistinguishable, as for accounts)."""
    try:
        key = uuid.UUID(str(order_id))
    except ValueError:
        raise errors.NotFound() from None
    order = Order.objects.filter(pk=key, account__owner=user).first()
    if order is None:
        raise errors.NotFound()
    return order


def _filter_param(params: Any, name: str) -> str:
    value = (params.get(name) or "").strip()
    if len(value) > ORDER_FILTER_MAX_LENGTH:
        raise errors.ValidationFailed(
            details={name: [f"At most {ORDER_FILTER_MAX_LENGTH} characters."]}
        )
    return str(value)


_PLAIN_DECIMAL = re.compile(r"[0-9]{1,30}(?:\.[0-9]{1,30})?")
_ORDER_TEXT_FIELDS = {"account_id": 64, "token_id": 100}  # name → max length
_ORDER_CHOICES = {
    "side": frozenset(Side.values),
    "type": frozenset(Order.Type.values),
    "time_in_force": frozenset(Order.TimeInForce.values),
}
_ORDER_DECIMAL_MAX = {
    "price": ORDER_PRICE_MAX,
    "size": ORDER_QUANTITY_MAX,
    "amount": ORDER_QUANTITY_MAX,
}


def _plain_text(value: Any, max_length: int) -> bool:
    """Printable ASCII, no surrounding whitespace, 1..max_length characters: a value every
    text field of the order body keeps exactly as sent."""
    return (
        type(value) is str
        and 0 < len(value) <= max_length
        and value.isascii()
        and value.isprintable()
        and value == value.strip()
    )


def plain_json_body(request: Request) -> Any:
    """The body parsed by orjson when it is declared `application/json` in UTF-8 and orjson
    parses it; None otherwise (the caller then reads `request.data`: DRF's parser and its
    errors). orjson refuses what DRF's parser refuses, and more (NaN, Infinity, lone
    surrogates); where the two parse a text differently (integers beyond 64 bits become
    floats), order_input_fast finds nothing plain and the serializer decides."""
    django_request = request._request
    if django_request.content_type != "application/json":
        return None
    charset = (django_request.content_params or {}).get("charset")
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        return None
    try:
        return orjson.loads(django_request.body)
    except orjson.JSONDecodeError:
        return None


def order_input_fast(data: Any) -> dict[str, Any] | None:
    """OrderListApi.InputSerializer's validated_data for a body made only of plain values
    (the shape bots send), without building the serializer: None for anything else, which
    then goes through the serializer, the only source of error messages. Plain means: a
    JSON object of known fields; ids and client_order_id printable ASCII without surrounding
    whitespace within their lengths; choices exactly as listed; price/size/amount null or
    unsigned decimal strings within bounds; expiration null or an integer in range;
    post_only a boolean. On those the serializer returns exactly this (tests compare the
    two on generated bodies)."""
    if type(data) is not dict:
        return None
    out: dict[str, Any] = {}
    for name, max_length in _ORDER_TEXT_FIELDS.items():
        if not _plain_text(data.get(name), max_length):
            return None
        out[name] = data[name]
    for name in ("side", "type"):
        value = data.get(name)
        if type(value) is not str or value not in _ORDER_CHOICES[name]:
            return None
        out[name] = value
    seen = 4
    for name, limit in _ORDER_DECIMAL_MAX.items():
        if name in data:
            seen += 1
            value = data[name]
            if value is not None:
                if type(value) is not str or not _PLAIN_DECIMAL.fullmatch(value):
                    return None
                value = Decimal(value)
                if value > limit:
                    return None
            out[name] = value
    if "time_in_force" in data:
        seen += 1
        value = data["time_in_force"]
        if value is not None and (
            type(value) is not str or value not in _ORDER_CHOICES["time_in_force"]
        ):
            return None
        out["time_in_force"] = value
    if "expiration" in data:
        seen += 1
        value = data["expiration"]
        if value is not None and (type(value) is not int or not 0 <= value <= 2**40):
            return None
        out["expiration"] = value
    out["post_only"] = False
    if "post_only" in data:
        seen += 1
        if type(data["post_only"]) is not bool:
            return None
        out["post_only"] = data["post_only"]
    if "client_order_id" in data:
        seen += 1
        value = data["client_order_id"]
        if value is not None and not _plain_text(value, 128):
            return None
        out["client_order_id"] = value
    if seen != len(data):  # an unknown field: the serializer names it
        return None
    return out


class OrderListApi(TraderApiView):
    # The engine stores some rejections (docs/fill-model.md): they commit under a key.
    idempotency_commit_on = tuple(STORED_REJECTIONS.values())

    # order_input_fast mirrors these rules for plain bodies (its tests compare the two).
    class InputSerializer(StrictInputSerializer):
        account_id = serializers.CharField(max_length=64)
        token_id = CleanTextField(max_length=100)
        side = serializers.ChoiceField(choices=Side.values)
        type = serializers.ChoiceField(choices=Order.Type.values)
        price = PriceField(required=False, allow_null=True, max_value=ORDER_PRICE_MAX)
        size = PriceField(required=False, allow_null=True, max_value=ORDER_QUANTITY_MAX)
        amount = MoneyField(required=False, allow_null=True, max_value=ORDER_QUANTITY_MAX)
        time_in_force = serializers.ChoiceField(
            choices=Order.TimeInForce.values, required=False, allow_null=True
        )
        expiration = serializers.IntegerField(
            required=False, allow_null=True, min_value=0, max_value=2**40
        )
        post_only = serializers.BooleanField(required=False, default=False)
        client_order_id = CleanTextField(
            required=False, allow_null=True, min_length=1, max_length=128
        )

    @extend_schema(
        operation_id="orders_place",
        request=InputSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={
            201: OrderDetailOutput,
            200: OpenApiResponse(
                OrderDetailOutput,
                description="Replay: the same client_order_id with the same content returns "
                "the existing order",
            ),
            **COMMON_ERRORS,
            **NOT_FOUND,
            **ENGINE_ERRORS,
        },
        description="Place an order on one of your accounts. What crosses the live book fills "
        "at once as taker (the fills are in the response); a GTC/GTD remainder rests with its "
        "cash or shares reserved. Prices and sizes are decimal strings. Retries are safe with "
        "`client_order_id`: the same id and content returns the first order (200), or its "
        "rejection again; the same id with different content is INVALID_ORDER_DUPLICATED. "
        "An `Idempotency-Key` header also makes a retry safe: the first response is replayed.",
    )
    def post(self, request: Request) -> Response:
        values = order_input_fast(plain_json_body(request))
        if values is None:
            data = self.InputSerializer(data=request.data)
            data.is_valid(raise_exception=True)
            values = dict(data.validated_data)
        # The engine checks the account is the caller's, open and tradable (in that order,
        # before the order's own checks), under its row lock.
        # No transaction of its own here: the engine commits the rejections it stores on
        # purpose (under an Idempotency-Key, _idempotent commits them too).
        placed = order_place(account_id=values.pop("account_id"), owner=self.user, **values)
        return PlainJSONResponse(
            order_detail_body(placed.order, placed.fills),
            status=201 if placed.created else 200,
        )

    @extend_schema(
        operation_id="orders_list",
        parameters=[
            OpenApiParameter("account_id", str, required=True),
            OpenApiParameter("status", str, enum=list(ORDER_STATUSES), description="default all"),
            OpenApiParameter("market", str, description="A market's condition id"),
            OpenApiParameter("token_id", str),
            *PAGE_PARAMS,
        ],
        responses={
            200: page_serializer("OrderPage", OrderOutput),
            **COMMON_ERRORS,
            **NOT_FOUND,
        },
        description="The account's orders, oldest first (keyset on creation time).",
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        account = account_for_trader(user=self.user, account_id=_required(params, "account_id"))
        status = _choice(params, "status", (*ORDER_STATUSES, "all"), "all")
        market = _filter_param(params, "market")
        token_id = _filter_param(params, "token_id")
        qs = Order.objects.filter(account=account)
        if status != "all":
            qs = qs.filter(status=status)
        if market:
            qs = qs.filter(market_id=market)
        if token_id:
            qs = qs.filter(token_id=token_id)
        # The cursor is bound to this account and these filters.
        query_key = json.dumps([str(account.pk), status, market, token_id], separators=(",", ":"))
        scope = "orders:" + hashlib.sha256(query_key.encode()).hexdigest()[:16]
        page = keyset_page(
            qs,
            scope=scope,
            fields=("created_at", "id"),
            cursor=params.get("cursor"),
            limit=parse_limit(params.get("limit")),
        )
        return Response(
            {
                "data": [order_body(o) for o in page.items],
                "next_cursor": page.next_cursor,
                "has_more": page.has_more,
            }
        )

    @extend_schema(
        operation_id="orders_cancel_many",
        parameters=[
            OpenApiParameter("account_id", str, required=True),
            OpenApiParameter("market", str, description="Only this market's orders (condition id)"),
            IDEMPOTENCY_HEADER,
        ],
        responses={
            200: inline_serializer(
                "OrdersCanceled", fields={"canceled": serializers.IntegerField()}
            ),
            **COMMON_ERRORS,
            **NOT_FOUND,
            **IDEMPOTENCY_ERRORS,
        },
        description="Cancel the account's live orders (of one market with `market`), releasing "
        'their reservations. Idempotent: nothing left to cancel is `{"canceled": 0}`.',
    )
    def delete(self, request: Request) -> Response:
        params = request.query_params
        account = account_for_trader(user=self.user, account_id=_required(params, "account_id"))
        market = _filter_param(params, "market")
        if market:
            canceled = order_cancel_market(account_id=account.pk, market_id=market, reason="USER")
        else:
            canceled = order_cancel_account(account_id=account.pk)
        return Response({"canceled": canceled})


class OrderDetailApi(TraderApiView):
    # The engine stores some rejections (docs/fill-model.md): they commit under a key.
    idempotency_commit_on = tuple(STORED_REJECTIONS.values())

    @extend_schema(
        operation_id="orders_get",
        responses={200: OrderDetailOutput, **COMMON_ERRORS, **NOT_FOUND},
        description="One of your orders with its fills.",
    )
    def get(self, request: Request, order_id: str) -> Response:
        return Response(order_detail_body(_order_for_trader(user=self.user, order_id=order_id)))

    @extend_schema(
        operation_id="orders_cancel",
        parameters=[IDEMPOTENCY_HEADER],
        responses={
            200: OrderDetailOutput,
            **COMMON_ERRORS,
            **NOT_FOUND,
            **IDEMPOTENCY_ERRORS,
            409: OpenApiResponse(
                ERROR_BODY,
                description="ILLEGAL_TRANSITION: the order is already finished; "
                "IDEMPOTENCY_KEY_IN_USE",
            ),
        },
        description="Cancel a live order and release its reservation. Cancelling a canceled "
        "order returns it unchanged; a matched, expired or rejected one is ILLEGAL_TRANSITION. "
        "Allowed on a frozen (firm-suspended) account: cancelling only reduces exposure.",
    )
    def delete(self, request: Request, order_id: str) -> Response:
        order = _order_for_trader(user=self.user, order_id=order_id)
        order = order_cancel(account_id=order.account_id, order_id=order.pk, reason="USER")
        order.refresh_from_db()  # the cancel writes through a queryset update (updated_at)
        return Response(order_detail_body(order))


# --- OpenAPI ----------------------------------------------------------------------------------
schema_postprocess = schema_postprocess_for(TRADER_ERROR_CODES)


SCHEMA_SETTINGS: dict[str, Any] = {
    "TITLE": "polysim Trader API",
    "DESCRIPTION": (
        "The native API for traders and their bots (the web UI uses it too): markets and live "
        "books, price history, your accounts, orders and fills. Authenticate with a personal "
        "trader API key (`Authorization: Bearer tk_...` or `X-API-Key: tk_...`) or a signed-in "
        "session (then send the CSRF token in `X-CSRFToken` on POST/DELETE). You only ever "
        "see your own accounts. Money and prices are decimal strings. Every error is "
        '`{"error": CODE, "message": ..., "details"?: {...}}`; the code is echoed in '
        "`X-Error-Code`."
    ),
    "SCHEMA_PATH_PREFIX": r"/v1",
    # Stable component names for the choice sets that share a field name.
    "ENUM_NAME_OVERRIDES": {
        "MarketStatusEnum": Market.Status.choices,
        "OrderStatusEnum": Order.Status.values,
        "OrderSideEnum": Side.values,
        "OrderTypeEnum": Order.Type.values,
        "TimeInForceEnum": Order.TimeInForce.values,
    },
    "APPEND_COMPONENTS": {
        "securitySchemes": {
            "TraderKeyBearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A personal trader API key, tk_...",
            },
            "TraderKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "Session": {"type": "apiKey", "in": "cookie", "name": "sessionid"},
        }
    },
    "SECURITY": [{"TraderKeyBearer": []}, {"TraderKeyHeader": []}, {"Session": []}],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "trading.apis.schema_postprocess",
    ],
}
