"""/v1/orders and /v1/orders/{id}: place, list, read and cancel orders."""

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
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import User
from core import errors
from core.api.fields import (
    CleanTextField,
    IsoDateTimeField,
    MoneyField,
    PriceField,
    StrictInputSerializer,
    iso_utc,
)
from core.api.params import query_choice, query_required
from core.api.responses import PlainJSONResponse
from core.api.schema import ERROR_BODY, PAGE_PARAMS, page_serializer
from core.api.schema import TRADER_COMMON_ERRORS as COMMON_ERRORS
from core.api.schema import TRADER_NOT_FOUND as NOT_FOUND
from core.api.views import TraderApiView
from core.money import wire
from core.pagination import keyset_page, parse_limit
from trading.models import Fill, Order, Side
from trading.permissions import (
    account_for_trader,
)
from trading.services import order_cancel, order_cancel_account, order_cancel_market, order_place
from trading.services.orders import STORED_REJECTIONS
from trading.wire import (
    TradeOutput,
)

_iso = iso_utc


def _iso_ms(value: int | None) -> str | None:
    return None if value is None else _iso(dt.datetime.fromtimestamp(value / 1000, dt.UTC))


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
        account = account_for_trader(
            user=self.user, account_id=query_required(params, "account_id")
        )
        status = query_choice(params, "status", (*ORDER_STATUSES, "all"), "all")
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
        account = account_for_trader(
            user=self.user, account_id=query_required(params, "account_id")
        )
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
