"""The trader API's OpenAPI document (/v1/openapi.json): its settings and error catalogue."""

from __future__ import annotations

from typing import Any

from core import errors
from core.api.schema import schema_postprocess_for
from marketdata.models import Market
from trading import states as order_states
from trading.models import Order, Side

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
    # The order engine's codes (docs/fill-model.md; ACCOUNT_CLOSED and VALIDATION_FAILED
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
        "trading.apis.openapi.schema_postprocess",
    ],
}
