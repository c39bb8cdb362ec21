"""/v1/accounts, /v1/accounts/{id}, /v1/trades: the trader's accounts, their state and fills."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Account
from core import errors
from core.api.fields import (
    IsoDateTimeField,
    MoneyField,
)
from core.api.params import query_int, query_required
from core.api.schema import CURSOR_ERRORS, PAGE_PARAMS, QUERY_ERRORS, page_serializer
from core.api.schema import TRADER_COMMON_ERRORS as COMMON_ERRORS
from core.api.schema import TRADER_NOT_FOUND as NOT_FOUND
from core.api.shapes import Shape
from core.api.views import TraderApiView
from core.pagination import parse_limit
from trading.permissions import (
    account_for_trader,
)
from trading.selectors import (
    MarkedPosition,
    account_equity,
    account_state,
    fill_feed_page,
    positions_liquidation,
)
from trading.wire import (
    TRADE,
    AccountEnvelopeOutput,
    PositionOutput,
    TradeOutput,
)


@dataclass(frozen=True)
class TraderAccountRow:
    """An account as the trader sees it: what TraderAccountOutput renders."""

    account: Account
    equity: Decimal

    @property
    def kind(self) -> str:
        return "personal" if self.account.tenant_id is None else "tenant"

    @property
    def managed_by(self) -> str | None:
        tenant = self.account.tenant
        return tenant.name if tenant is not None else None

    @property
    def trading_enabled(self) -> bool:
        tenant = self.account.tenant
        return not self.account.is_closed and (tenant is None or tenant.enabled)


class TraderAccountOutput(serializers.Serializer):
    account_id = serializers.UUIDField(source="account.pk")
    kind = serializers.ChoiceField(choices=["personal", "tenant"])
    managed_by = serializers.CharField(allow_null=True, help_text="The firm's name, if any")
    external_id = serializers.CharField(source="account.external_id", allow_null=True)
    stage = serializers.CharField(source="account.stage", allow_null=True)
    status = serializers.CharField(source="account.status")
    trading_enabled = serializers.BooleanField(
        help_text="False when the account is closed or its firm suspended trading"
    )
    epoch = serializers.IntegerField(source="account.epoch")
    starting_balance = MoneyField(source="account.starting_balance")
    balance = MoneyField(source="account.cash")
    available_balance = MoneyField(source="account.available_cash")
    equity = MoneyField()
    created_at = IsoDateTimeField(source="account.created_at")


TRADER_ACCOUNT = Shape(TraderAccountOutput)


@dataclass(frozen=True)
class _LiquidatedPosition(MarkedPosition):
    """A position of the trader's envelope: its mark and what selling it now would yield."""

    liquidation_value: Decimal | None = None


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
        rows = [TraderAccountRow(a, account_equity(account=a)) for a in accounts]
        return Response({"data": TRADER_ACCOUNT.render_many(rows)})


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


TRADER_ENVELOPE = Shape(TraderAccountEnvelopeOutput)


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
        liquidation = positions_liquidation(state["positions"])
        positions = [
            _LiquidatedPosition(m.position, m.mark, m.top, liquidation.get(m.position.token_id))
            for m in state["positions"]
        ]
        return Response(TRADER_ENVELOPE.render({**state, "positions": positions}))


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
            **CURSOR_ERRORS,
            **QUERY_ERRORS,
            **NOT_FOUND,
        },
        description="The account's fills and settlements, ascending and append-only (as the "
        "partner trades feed). next_cursor is always returned: store it and poll with it.",
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        account = account_for_trader(
            user=self.user, account_id=query_required(params, "account_id")
        )
        page = fill_feed_page(
            account=account,
            cursor=params.get("cursor"),
            limit=parse_limit(params.get("limit")),
            epoch=query_int(params, "epoch", low=0, high=2**31),
        )
        return Response(
            {
                "data": TRADE.render_many(page.fills),
                "next_cursor": page.next_cursor,
                "has_more": page.has_more,
            }
        )
