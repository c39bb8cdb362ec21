"""Domain errors: every failure a client can see has a stable UPPER_SNAKE code.

Services raise these; one handler (core.exceptions) renders them as
`{"error": CODE, "message": TEXT, "details"?: {...}}` with the code echoed in `X-Error-Code`.
Services never build HTTP responses and never import DRF.
"""

from __future__ import annotations

from typing import Any, ClassVar


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


# --- Partner API (partner-api.md §3) ----------------------------------------------------------
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
