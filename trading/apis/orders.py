"""/v1/orders and /v1/orders/{id}: place, list, read and cancel orders."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

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
    UnixSecondsField,
)
from core.api.params import query_choice, query_required
from core.api.responses import PlainJSONResponse
from core.api.schema import (
    CURSOR_ERRORS,
    ERROR_BODY,
    IDEMPOTENCY_HEADER,
    PAGE_PARAMS,
    QUERY_ERRORS,
    page_serializer,
)
from core.api.schema import TRADER_COMMON_ERRORS as COMMON_ERRORS
from core.api.schema import TRADER_NOT_FOUND as NOT_FOUND
from core.api.shapes import Shape, With
from core.api.views import TraderApiView
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

# --- Orders -----------------------------------------------------------------------------------
ORDER_STATUSES = tuple(Order.Status.values)
# Bounds that only keep Decimal arithmetic finite; every business rule on price, size and
# amount (tick, minimum size, decimals, > 0) is the engine's, so its codes reach the client.
ORDER_PRICE_MAX = Decimal("1000")
ORDER_QUANTITY_MAX = Decimal("1000000000000")
ORDER_FILTER_MAX_LENGTH = 100

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
    expiration = UnixSecondsField(allow_null=True, help_text="GTD: unix seconds")
    created_at = IsoDateTimeField()
    updated_at = IsoDateTimeField()


class OrderDetailOutput(OrderOutput):
    fills = TradeOutput(
        many=True, source="fills_in_order", help_text="Its fills, as GET /v1/trades lists them"
    )


ORDER = Shape(OrderOutput)
ORDER_DETAIL = Shape(OrderDetailOutput)


def order_detail_body(order: Order, fills: Iterable[Fill] | None = None) -> dict[str, Any]:
    """OrderDetailOutput: the order and its fills (read from the database unless given)."""
    in_order = order.fills.order_by("seq") if fills is None else fills
    return ORDER_DETAIL.render(With(order, fills_in_order=in_order))


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


class OrderListApi(TraderApiView):
    # The engine stores some rejections (docs/fill-model.md): they commit under a key.
    idempotency_commit_on = tuple(STORED_REJECTIONS.values())

    # The request's one declaration (validated through ORDER_INPUT); every business rule on
    # the values is the engine's (trading.services.orders.order_request).
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
        values = ORDER_INPUT.validate(request.data)
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
            **CURSOR_ERRORS,
            **QUERY_ERRORS,
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
                "data": ORDER.render_many(page.items),
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


ORDER_INPUT = Shape(OrderListApi.InputSerializer)


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
