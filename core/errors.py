"""Domain errors: every failure a client can see has a stable UPPER_SNAKE code.

Services raise these; one handler (core.exceptions) renders them as
`{"error": CODE, "message": TEXT, "details"?: {...}}` with the code echoed in `X-Error-Code`.
Services never build HTTP responses and never import DRF.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import psycopg
import redis
from django.db import InterfaceError, OperationalError


class DomainError(Exception):
    code: ClassVar[str] = "INTERNAL_ERROR"
    status: ClassVar[int] = 500
    default_message: ClassVar[str] = "Internal error."

    def __init__(
        self,
        message: str | None = None,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.details = details
        self.headers = headers or {}
        super().__init__(self.message)

    def as_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


def _error(code: str, status: int, message: str) -> type[DomainError]:
    """Declare a DomainError subclass; keeps the catalogue below one line per code."""
    return type(
        "".join(part.capitalize() for part in code.split("_")) + "Error",
        (DomainError,),
        {"code": code, "status": status, "default_message": message, "__module__": __name__},
    )


# --- Partner API (docs/partner-api.md) ----------------------------------------------------------
MissingApiKey = _error("MISSING_API_KEY", 401, "Send your API key in the X-API-Key header.")
InvalidApiKey = _error("INVALID_API_KEY", 401, "The API key is unknown, revoked or expired.")
InsufficientPermission = _error(
    "INSUFFICIENT_PERMISSION", 403, "This API key does not have the scope this call needs."
)
NotFound = _error("NOT_FOUND", 404, "Not found.")
MethodNotAllowed = _error("METHOD_NOT_ALLOWED", 405, "Method not allowed on this path.")
MalformedJson = _error("MALFORMED_JSON", 400, "The request body is not valid JSON.")
ValidationFailed = _error("VALIDATION_FAILED", 422, "The request has invalid fields.")
InvalidCursor = _error("INVALID_CURSOR", 400, "The cursor is malformed or belongs to another list.")
ExternalIdConflict = _error(
    "EXTERNAL_ID_CONFLICT", 409, "This external_id is already used with different values."
)
EmailAlreadyMapped = _error(
    "EMAIL_ALREADY_MAPPED", 409, "This email is already registered under another external_id."
)
AccountClosed = _error("ACCOUNT_CLOSED", 409, "The account is closed.")
FieldNotPatchable = _error("FIELD_NOT_PATCHABLE", 422, "Only rules and metadata can be changed.")
RedirectNotAllowed = _error(
    "REDIRECT_NOT_ALLOWED", 422, "redirect_url is not on this tenant's allowlist."
)
LoginLinkThrottled = _error(
    "LOGIN_LINK_THROTTLED", 429, "Too many login links for this user in the last hour."
)
IdempotencyKeyReused = _error(
    "IDEMPOTENCY_KEY_REUSED", 422, "This Idempotency-Key was used with a different request."
)
IdempotencyKeyInUse = _error(
    "IDEMPOTENCY_KEY_IN_USE", 409, "A request with this Idempotency-Key is still being processed."
)
RateLimitExceeded = _error("RATE_LIMIT_EXCEEDED", 429, "Rate limit exceeded; retry later.")
ServiceUnavailable = _error("SERVICE_UNAVAILABLE", 503, "Service temporarily unavailable.")
InternalError = _error("INTERNAL_ERROR", 500, "Internal error. It has been logged.")

PARTNER_ERROR_CODES: tuple[type[DomainError], ...] = (
    MissingApiKey,
    InvalidApiKey,
    InsufficientPermission,
    NotFound,
    MethodNotAllowed,
    MalformedJson,
    ValidationFailed,
    InvalidCursor,
    ExternalIdConflict,
    EmailAlreadyMapped,
    AccountClosed,
    FieldNotPatchable,
    RedirectNotAllowed,
    LoginLinkThrottled,
    IdempotencyKeyReused,
    IdempotencyKeyInUse,
    RateLimitExceeded,
    ServiceUnavailable,
    InternalError,
)

# --- Trader API (issue #4): auth and account access ------------------------------------------
MissingCredentials = _error(
    "MISSING_CREDENTIALS",
    401,
    "Sign in, or send a trader API key as `Authorization: Bearer tk_...` or in X-API-Key.",
)
CsrfFailed = _error(
    "CSRF_FAILED", 403, "CSRF check failed: send the csrftoken cookie's value in X-CSRFToken."
)
TenantDisabled = _error(
    "TENANT_DISABLED", 403, "The firm that manages this account has suspended trading on it."
)
# Same code as the engine's order rejection (docs/engine-rules.md §2); on a read of the book it is
# a 503 with Retry-After: the subscription has just been requested.
BookNotReady = _error(
    "MARKET_NOT_READY", 503, "No order book for this token yet; retry in a moment."
)


# --- Trading engine (docs/engine-rules.md §2): Polymarket-style order rejection codes -------------
# 400: the order itself is malformed for this market; 422: the order is well formed but the
# account, market or book state refuses it now; 503: try again once the feed has resynced.
InvalidOrderMinTickSize = _error(
    "INVALID_ORDER_MIN_TICK_SIZE",
    400,
    "The price is not a multiple of the tick size or is outside [tick, 1 - tick].",
)
InvalidOrderMinSize = _error(
    "INVALID_ORDER_MIN_SIZE", 400, "The size is below the market's minimum order size."
)
InvalidOrderDuplicated = _error(
    "INVALID_ORDER_DUPLICATED",
    422,
    "This client_order_id was already used for a different order.",
)
InvalidOrderNotEnoughBalance = _error(
    "INVALID_ORDER_NOT_ENOUGH_BALANCE", 422, "Not enough available cash for this order."
)
InsufficientPosition = _error(
    "INSUFFICIENT_POSITION", 422, "Not enough available shares to sell (no naked shorts)."
)
InvalidOrderExpiration = _error(
    "INVALID_ORDER_EXPIRATION", 400, "A GTD expiration must be at least 60 seconds from now."
)
InvalidPostOnlyOrderType = _error(
    "INVALID_POST_ONLY_ORDER_TYPE", 400, "Post-only orders must be GTC or GTD limit orders."
)
InvalidPostOnlyOrder = _error(
    "INVALID_POST_ONLY_ORDER", 422, "The post-only order would cross the book."
)
FokOrderNotFilledError = _error(
    "FOK_ORDER_NOT_FILLED_ERROR", 422, "The FOK order could not be filled in full now."
)
MarketClosed = _error(
    "MARKET_CLOSED", 422, "The market is closed, resolved or not accepting orders."
)
MarketNotReady = _error("MARKET_NOT_READY", 422, "There is no order book for this token yet.")
StaleBook = _error(
    "STALE_BOOK", 503, "The order book is stale or being resynced; taker orders are paused."
)

ENGINE_ERROR_CODES: tuple[type[DomainError], ...] = (
    InvalidOrderMinTickSize,
    InvalidOrderMinSize,
    InvalidOrderDuplicated,
    InvalidOrderNotEnoughBalance,
    InsufficientPosition,
    InvalidOrderExpiration,
    InvalidPostOnlyOrderType,
    InvalidPostOnlyOrder,
    FokOrderNotFilledError,
    MarketClosed,
    MarketNotReady,
    StaleBook,
    AccountClosed,
    ValidationFailed,
)


# --- A backing service is down (docs/operations.md "When PostgreSQL or Redis is down") --------
# Exceptions that mean "PostgreSQL or Redis cannot serve right now", not "the request or the
# code is wrong". Redis: refused or reset connections, timeouts, LOADING while it reads its
# dump (BusyLoadingError is a ConnectionError), a replica that became read-only. PostgreSQL:
# Django's wrapped OperationalError/InterfaceError (connection refused or lost, server
# shutting down; also deadlocks and serialization failures that outlived the services'
# retries: all transient) and the driver's own, for the few calls Django does not wrap.
# Code that talks to a service lets these propagate (or catches them to degrade on purpose);
# it never wraps them in another type, so the web answers 503 and the processes recover.
REDIS_UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,
)
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)


def service_down(exc: BaseException) -> Literal["redis", "postgresql"] | None:
    """Which backing service `exc` says is unreachable, or None for any other exception."""
    if isinstance(exc, REDIS_UNAVAILABLE):
        return "redis"
    if isinstance(exc, DATABASE_UNAVAILABLE):
        return "postgresql"
    return None
