"""The partner API, /v1/partner/* (contract: docs/partner-api.md).

Every view derives from PartnerApiView, which applies the contract's order of checks: key
present → key valid → tenant enabled → rate limit → scope → object; wraps POST and PATCH in
Idempotency-Key handling; and stamps the rate-limit headers on every response, errors
included. Views only translate HTTP ↔ services/selectors; they never build error bodies.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from django.utils import timezone
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Account
from core import errors
from core.api.fields import (
    CleanTextField,
    IsoDateTimeField,
    JSONObjectField,
    MoneyField,
    StrictInputSerializer,
)
from core.api.params import query_datetime
from core.api.schema import (
    CURSOR_ERRORS,
    ERROR_BODY,
    IDEMPOTENCY_HEADER,
    PAGE_PARAMS,
    QUERY_ERRORS,
    page_serializer,
)
from core.api.shapes import Shape, With
from core.api.views import EdgeApiView, EdgeCaller, presented_key
from core.money import STARTING_BALANCE_MAX, STARTING_BALANCE_PLACES, ZERO
from core.pagination import keyset_page, parse_limit
from partners import keys, selectors, services
from partners.models import Scope
from trading.selectors import (
    EQUITY_INTERVALS,
    EQUITY_MAX_POINTS,
    account_state,
    equity_series,
    fill_feed_page,
)
from trading.services import account_close, account_reset
from trading.wire import ENVELOPE, TRADE, AccountEnvelopeOutput, TradeOutput

COMMON_ERRORS = {
    401: OpenApiResponse(ERROR_BODY, description="MISSING_API_KEY or INVALID_API_KEY"),
    403: OpenApiResponse(ERROR_BODY, description="INSUFFICIENT_PERMISSION"),
    404: OpenApiResponse(ERROR_BODY, description="NOT_FOUND (also: other tenant's object)"),
    429: OpenApiResponse(ERROR_BODY, description="RATE_LIMIT_EXCEEDED (Retry-After)"),
}
# Reads that take query parameters: a bad one is 422, a foreign or stale cursor 400.
PAGE_ERRORS = {**COMMON_ERRORS, **CURSOR_ERRORS, **QUERY_ERRORS}
WRITE_ERRORS = {
    **COMMON_ERRORS,
    400: OpenApiResponse(ERROR_BODY, description="MALFORMED_JSON"),
    409: OpenApiResponse(ERROR_BODY, description="conflict (see code)"),
    422: OpenApiResponse(ERROR_BODY, description="VALIDATION_FAILED or another 422 code"),
}


class PartnerApiView(EdgeApiView):
    """Base of every partner endpoint; see the module docstring for what it guarantees."""

    #: method → scope required; methods not listed are answered 405 by DRF.
    scopes: ClassVar[dict[str, str]] = {}
    idempotent_methods = frozenset({"POST", "PATCH"})

    def authenticate_caller(self, request: Request) -> EdgeCaller:
        caller = keys.authenticate(presented_key(request))
        self.caller = caller
        self.tenant = caller.tenant
        return EdgeCaller(
            limit_scope=caller.tenant.pk,
            limit_key=caller.api_key.prefix,
            per_second=caller.tenant.rate_limit_per_second,
            per_minute=caller.tenant.rate_limit_per_minute,
            tenant=caller.tenant,
        )

    def authorize(self, request: Request) -> None:
        required = self.scopes.get((request.method or "").upper())
        if required is not None and required not in self.caller.scopes:
            raise errors.InsufficientPermission(
                f"this key lacks the {required} scope", details={"required_scope": required}
            )


# --- Output shapes --------------------------------------------------------------------------
# Each serializer is its shape's one declaration: the OpenAPI schema, and the body through
# its Shape (core.api.shapes).
class MappingOutput(serializers.Serializer):
    user_id = serializers.IntegerField()
    tenant_user_id = serializers.UUIDField(source="id")
    external_id = serializers.CharField()
    email = serializers.CharField(source="user.email")
    metadata = serializers.JSONField()
    created_at = IsoDateTimeField()


class UserRegisteredOutput(MappingOutput):
    created = serializers.BooleanField(help_text="false on a replay of the same external_id")


class AccountSummaryOutput(serializers.Serializer):
    account_id = serializers.UUIDField(source="id")
    external_id = serializers.CharField()
    stage = serializers.CharField()
    status = serializers.CharField()


class UserDetailOutput(MappingOutput):
    accounts = AccountSummaryOutput(many=True, source="account_summaries")


class AccountListItemOutput(AccountSummaryOutput):
    user_id = serializers.IntegerField(source="owner_id")
    created_at = IsoDateTimeField()


class EquityPointOutput(serializers.Serializer):
    t = IsoDateTimeField()
    open = MoneyField()
    high = MoneyField()
    low = MoneyField()
    close = MoneyField()


# "from" is a Python keyword, so this one is declared with type().
EquitySeriesOutput = type(
    "EquitySeriesOutput",
    (serializers.Serializer,),
    {
        "account_id": serializers.UUIDField(),
        "epoch": serializers.IntegerField(),
        "interval": serializers.ChoiceField(choices=list(EQUITY_INTERVALS)),
        "from": IsoDateTimeField(),
        "to": IsoDateTimeField(),
        "points": EquityPointOutput(many=True),
    },
)


class KeyPrefixField(serializers.CharField):
    def to_representation(self, value: str) -> str:
        return f"{keys.KEY_PREFIX}{value}"


class SortedStringsField(serializers.ListField):
    child = serializers.CharField()

    def to_representation(self, data: Any) -> list[str]:
        return sorted(data)


class WhoamiTenantOutput(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()


class WhoamiKeyOutput(serializers.Serializer):
    prefix = KeyPrefixField(help_text="The key's public prefix, pk_xxxxxxxx")
    name = serializers.CharField()
    scopes = SortedStringsField()
    created_at = IsoDateTimeField()


class WhoamiLimitsOutput(serializers.Serializer):
    per_second = serializers.IntegerField(source="rate_limit_per_second")
    per_minute = serializers.IntegerField(source="rate_limit_per_minute")


class WhoamiOutput(serializers.Serializer):
    tenant = WhoamiTenantOutput()
    api_key = WhoamiKeyOutput()
    rate_limits = WhoamiLimitsOutput(source="tenant")


MAPPING = Shape(MappingOutput)
USER_REGISTERED = Shape(UserRegisteredOutput)
USER_DETAIL = Shape(UserDetailOutput)
ACCOUNT_LIST_ITEM = Shape(AccountListItemOutput)
EQUITY_SERIES = Shape(EquitySeriesOutput)
WHOAMI = Shape(WhoamiOutput)


def envelope(account_id: Any, tenant: Any) -> dict[str, Any]:
    state = account_state(account_id=account_id, tenant=tenant)
    if state is None:
        raise errors.NotFound()
    return ENVELOPE.render(state)


# --- Users ----------------------------------------------------------------------------------
class UserListCreateApi(PartnerApiView):
    scopes = {"GET": Scope.ACCOUNTS_READ, "POST": Scope.USERS_WRITE}

    class InputSerializer(StrictInputSerializer):
        class Meta:
            ref_name = "UserRegisterRequest"

        external_id = CleanTextField(min_length=1, max_length=255, trim_whitespace=False)
        email = CleanTextField(min_length=3, max_length=320)
        metadata = JSONObjectField(required=False)

        def validate_email(self, value: str) -> str:
            value = value.strip().lower()
            serializers.EmailField().run_validation(value)
            return value

        def validate_external_id(self, value: str) -> str:
            if not value.strip():
                raise serializers.ValidationError("Must not be blank.")
            return value

    @extend_schema(
        operation_id="users_list",
        parameters=[OpenApiParameter("external_id", str), *PAGE_PARAMS],
        responses={200: page_serializer("UserPage", MappingOutput), **PAGE_ERRORS},
    )
    def get(self, request: Request) -> Response:
        page = keyset_page(
            selectors.mapping_list(
                tenant=self.tenant, external_id=request.query_params.get("external_id")
            ),
            scope=f"users:{self.tenant.pk}",
            fields=("created_at", "id"),
            cursor=request.query_params.get("cursor"),
            limit=parse_limit(request.query_params.get("limit")),
        )
        data = MAPPING.render_many(page.items)
        return Response({"data": data, "next_cursor": page.next_cursor, "has_more": page.has_more})

    @extend_schema(
        operation_id="users_register",
        request=InputSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={
            201: UserRegisteredOutput,
            200: OpenApiResponse(
                description="Replay of the same external_id: same body, created=false"
            ),
            **WRITE_ERRORS,
        },
        description="Register or resolve a trader. 409 EXTERNAL_ID_CONFLICT (same external_id, "
        "different email) or EMAIL_ALREADY_MAPPED (email mapped under another external_id).",
    )
    def post(self, request: Request) -> Response:
        values = USER_REGISTER_INPUT.validate(request.data)
        mapping, created = services.trader_register(tenant=self.tenant, **values)
        return Response(
            USER_REGISTERED.render(With(mapping, created=created)),
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


USER_REGISTER_INPUT = Shape(UserListCreateApi.InputSerializer)


class UserDetailApi(PartnerApiView):
    scopes = {"GET": Scope.ACCOUNTS_READ}

    @extend_schema(
        operation_id="users_get",
        responses={
            200: UserDetailOutput,
            **COMMON_ERRORS,
        },
    )
    def get(self, request: Request, user_id: str) -> Response:
        mapping = selectors.mapping_get(tenant=self.tenant, user_id=user_id)
        summaries = selectors.accounts_of_mapping(mapping=mapping)
        return Response(USER_DETAIL.render(With(mapping, account_summaries=summaries)))


class UserLoginLinkApi(PartnerApiView):
    scopes = {"POST": Scope.USERS_WRITE}

    class InputSerializer(StrictInputSerializer):
        class Meta:
            ref_name = "LoginLinkRequest"

        redirect_url = CleanTextField(required=False, allow_blank=True, max_length=2048)

    @extend_schema(
        operation_id="users_login_link",
        request=InputSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={
            202: inline_serializer("Accepted", fields={"status": serializers.CharField()}),
            **WRITE_ERRORS,
        },
        description="Email the trader a one-time sign-in link (15 minutes, single use). The "
        "link is never in the response. 422 REDIRECT_NOT_ALLOWED, 429 LOGIN_LINK_THROTTLED.",
    )
    def post(self, request: Request, user_id: str) -> Response:
        # The user must be resolved before the body is judged, so a foreign id is 404 whatever
        # the body says.
        selectors.mapping_get(tenant=self.tenant, user_id=user_id)
        values = LOGIN_LINK_INPUT.validate(request.data if request.body else {})
        services.partner_login_link_send(
            tenant=self.tenant,
            user_id=user_id,
            redirect_url=values.get("redirect_url") or None,
        )
        return Response({"status": "accepted"}, status=status.HTTP_202_ACCEPTED)


LOGIN_LINK_INPUT = Shape(UserLoginLinkApi.InputSerializer)


# --- Accounts -------------------------------------------------------------------------------
class AccountListCreateApi(PartnerApiView):
    scopes = {"GET": Scope.ACCOUNTS_READ, "POST": Scope.ACCOUNTS_WRITE}

    class InputSerializer(StrictInputSerializer):
        class Meta:
            ref_name = "AccountCreateRequest"

        user_id = serializers.IntegerField(min_value=1)
        external_id = CleanTextField(min_length=1, max_length=255, trim_whitespace=False)
        stage = serializers.ChoiceField(choices=Account.Stage.choices)
        starting_balance = MoneyField(
            max_places=STARTING_BALANCE_PLACES, gt=ZERO, max_value=STARTING_BALANCE_MAX
        )
        rules = JSONObjectField(required=False)
        metadata = JSONObjectField(required=False)

        def validate_external_id(self, value: str) -> str:
            if not value.strip():
                raise serializers.ValidationError("Must not be blank.")
            return value

    @extend_schema(
        operation_id="accounts_list",
        parameters=[
            OpenApiParameter("user_id", int),
            OpenApiParameter("stage", str, enum=list(Account.Stage.values)),
            OpenApiParameter("status", str, enum=list(Account.Status.values)),
            OpenApiParameter("external_id", str),
            *PAGE_PARAMS,
        ],
        responses={200: page_serializer("AccountPage", AccountListItemOutput), **PAGE_ERRORS},
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        for name, choices in (("stage", Account.Stage.values), ("status", Account.Status.values)):
            if params.get(name) and params[name] not in choices:
                raise errors.ValidationFailed(details={name: [f"One of: {', '.join(choices)}."]})
        page = keyset_page(
            selectors.account_list_for_tenant(
                tenant=self.tenant,
                user_id=params.get("user_id"),
                stage=params.get("stage"),
                status=params.get("status"),
                external_id=params.get("external_id"),
            ),
            scope=f"accounts:{self.tenant.pk}",
            fields=("created_at", "id"),
            cursor=params.get("cursor"),
            limit=parse_limit(params.get("limit")),
        )
        data = ACCOUNT_LIST_ITEM.render_many(page.items)
        return Response({"data": data, "next_cursor": page.next_cursor, "has_more": page.has_more})

    @extend_schema(
        operation_id="accounts_create",
        request=InputSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={
            201: AccountEnvelopeOutput,
            200: OpenApiResponse(
                AccountEnvelopeOutput, description="Replay of the same external_id"
            ),
            **WRITE_ERRORS,
        },
    )
    def post(self, request: Request) -> Response:
        values = ACCOUNT_OPEN_INPUT.validate(request.data)
        account, created = services.partner_account_open(tenant=self.tenant, **values)
        return Response(
            envelope(account.pk, self.tenant),
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


ACCOUNT_OPEN_INPUT = Shape(AccountListCreateApi.InputSerializer)


class AccountDetailApi(PartnerApiView):
    scopes = {"GET": Scope.ACCOUNTS_READ, "PATCH": Scope.ACCOUNTS_WRITE}

    class PatchSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AccountPatchRequest"

        rules = JSONObjectField(required=False)
        metadata = JSONObjectField(required=False)

    @extend_schema(
        operation_id="accounts_get", responses={200: AccountEnvelopeOutput, **COMMON_ERRORS}
    )
    def get(self, request: Request, account_id: str) -> Response:
        # One statement (two with positions), scoped to the tenant: foreign or malformed ids
        # are the same NOT_FOUND as missing ones.
        return Response(envelope(account_id, self.tenant))

    @extend_schema(
        operation_id="accounts_patch",
        request=PatchSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={200: AccountEnvelopeOutput, **WRITE_ERRORS},
        description="Replace rules and/or metadata. Any other field: 422 FIELD_NOT_PATCHABLE. "
        "Closed account: 409 ACCOUNT_CLOSED.",
    )
    def patch(self, request: Request, account_id: str) -> Response:
        account = selectors.account_get_for_tenant(tenant=self.tenant, account_id=account_id)
        body = request.data
        if not isinstance(body, dict):
            raise errors.ValidationFailed(
                details={"non_field_errors": ["The body must be a JSON object."]}
            )
        services.patch_fields_check(changes=body)
        if not body:
            raise errors.ValidationFailed(
                details={"non_field_errors": ["Send rules and/or metadata."]}
            )
        changes = ACCOUNT_PATCH_INPUT.validate(body)
        services.partner_account_patch(account=account, changes=changes)
        return Response(envelope(account.pk, self.tenant))


ACCOUNT_PATCH_INPUT = Shape(AccountDetailApi.PatchSerializer)


class AccountTradesApi(PartnerApiView):
    scopes = {"GET": Scope.ACCOUNTS_READ}

    @extend_schema(
        operation_id="accounts_trades",
        parameters=[
            *PAGE_PARAMS,
            OpenApiParameter(
                "since", dt.datetime, description="ISO-8601 with a timezone; fills at or after"
            ),
            OpenApiParameter("epoch", int),
        ],
        responses={200: page_serializer("TradePage", TradeOutput), **PAGE_ERRORS},
        description="Filled trades and settlements, ascending and append-only. next_cursor is "
        "always returned, pointing just after the last item: store it and poll with it.",
    )
    def get(self, request: Request, account_id: str) -> Response:
        account = selectors.account_get_for_tenant(tenant=self.tenant, account_id=account_id)
        params = request.query_params
        epoch = None
        if params.get("epoch") not in (None, ""):
            try:
                epoch = int(params["epoch"])
            except ValueError:
                raise errors.ValidationFailed(details={"epoch": ["An integer."]}) from None
        page = fill_feed_page(
            account=account,
            cursor=params.get("cursor"),
            limit=parse_limit(params.get("limit")),
            since=query_datetime(params, "since"),
            epoch=epoch,
        )
        return Response(
            {
                "data": TRADE.render_many(page.fills),
                "next_cursor": page.next_cursor,
                "has_more": page.has_more,
            }
        )


class AccountEquityApi(PartnerApiView):
    scopes = {"GET": Scope.ACCOUNTS_READ}

    @extend_schema(
        operation_id="accounts_equity",
        parameters=[
            OpenApiParameter(
                "from",
                dt.datetime,
                description="ISO-8601 with a timezone; default: 1440 intervals before `to`",
            ),
            OpenApiParameter(
                "to", dt.datetime, description="ISO-8601 with a timezone; default: now (exclusive)"
            ),
            OpenApiParameter(
                "interval", str, enum=list(EQUITY_INTERVALS), description="default 1h"
            ),
            OpenApiParameter("epoch", int, description="default: the current epoch"),
        ],
        responses={
            200: EquitySeriesOutput,
            **COMMON_ERRORS,
            **QUERY_ERRORS,
        },
        description="Equity per interval (open/high/low/close of the snapshots taken at "
        f"every fill and each minute with positions). At most {EQUITY_MAX_POINTS} intervals.",
    )
    def get(self, request: Request, account_id: str) -> Response:
        account = selectors.account_get_for_tenant(tenant=self.tenant, account_id=account_id)
        params = request.query_params
        interval = params.get("interval") or "1h"
        if interval not in EQUITY_INTERVALS:
            raise errors.ValidationFailed(
                details={"interval": [f"One of: {', '.join(EQUITY_INTERVALS)}."]}
            )
        step = EQUITY_INTERVALS[interval]
        end = query_datetime(params, "to") or timezone.now()
        start = query_datetime(params, "from") or end - dt.timedelta(seconds=step * 1440)
        if start >= end:
            raise errors.ValidationFailed(details={"from": ["Must be before `to`."]})
        if (end - start).total_seconds() / step > EQUITY_MAX_POINTS:
            raise errors.ValidationFailed(
                details={"from": [f"At most {EQUITY_MAX_POINTS} intervals; use a wider interval."]}
            )
        epoch = account.epoch
        if params.get("epoch") not in (None, ""):
            try:
                epoch = int(params["epoch"])
            except ValueError:
                raise errors.ValidationFailed(details={"epoch": ["An integer."]}) from None
        points = equity_series(account=account, epoch=epoch, start=start, end=end, interval_s=step)
        series = {
            "account_id": account.pk,
            "epoch": epoch,
            "interval": interval,
            "from": start,
            "to": end,
            "points": points,
        }
        return Response(EQUITY_SERIES.render(series))


class AccountCloseApi(PartnerApiView):
    scopes = {"POST": Scope.ACCOUNTS_WRITE}

    @extend_schema(
        operation_id="accounts_close",
        request=None,
        parameters=[IDEMPOTENCY_HEADER],
        responses={200: AccountEnvelopeOutput, **WRITE_ERRORS},
        description="Cancel open orders and freeze the account. Closing again returns 200.",
    )
    def post(self, request: Request, account_id: str) -> Response:
        account = selectors.account_get_for_tenant(tenant=self.tenant, account_id=account_id)
        account_close(account=account)
        return Response(envelope(account.pk, self.tenant))


class AccountResetApi(PartnerApiView):
    scopes = {"POST": Scope.ACCOUNTS_WRITE}

    @extend_schema(
        operation_id="accounts_reset",
        request=None,
        parameters=[IDEMPOTENCY_HEADER],
        responses={200: AccountEnvelopeOutput, **WRITE_ERRORS},
        description="New epoch at the starting balance. Closed account: 409 ACCOUNT_CLOSED.",
    )
    def post(self, request: Request, account_id: str) -> Response:
        account = selectors.account_get_for_tenant(tenant=self.tenant, account_id=account_id)
        account_reset(account=account)
        return Response(envelope(account.pk, self.tenant))


class WhoamiApi(PartnerApiView):
    scopes = {"GET": Scope.ACCOUNTS_READ}

    @extend_schema(
        operation_id="whoami",
        responses={
            200: WhoamiOutput,
            **COMMON_ERRORS,
        },
    )
    def get(self, request: Request) -> Response:
        return Response(WHOAMI.render(self.caller))
