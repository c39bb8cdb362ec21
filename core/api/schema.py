"""OpenAPI pieces shared by the partner and trader documents: the error envelope, paging
parameters, the Idempotency-Key header, and the post-processing hook (canonical paths, the
503 every operation can answer, the error-code catalogue)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, inline_serializer
from rest_framework import serializers

from core.api.idempotency import KEY_MAX_LENGTH
from core.errors import DomainError
from core.pagination import DEFAULT_LIMIT, MAX_LIMIT

# Every operation can answer with the envelope (core.exceptions renders it).
ERROR_BODY = inline_serializer(
    "Error",
    fields={
        "error": serializers.CharField(help_text="Stable UPPER_SNAKE code; branch on this."),
        "message": serializers.CharField(),
        "details": serializers.DictField(required=False),
    },
)
PAGE_PARAMS = [
    OpenApiParameter(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        description=f"1–{MAX_LIMIT}, default {DEFAULT_LIMIT}",
    ),
    OpenApiParameter("cursor", str, description="Opaque next_cursor from the previous page"),
]
IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    {
        "type": "string",
        "minLength": 1,
        "maxLength": KEY_MAX_LENGTH,
        "pattern": "^[!-~]+$",
    },
    OpenApiParameter.HEADER,
    required=False,
    description=f"Optional, 1-{KEY_MAX_LENGTH} printable ASCII characters without spaces, "
    "scoped to your firm (partner API) or to you (trader API: all your keys and your "
    "session). Same key + same request (method, path — with the query on the trader API — "
    "and body) → the first 2xx status and body replayed with `Idempotent-Replayed: true`; "
    "same key + different request → 422 IDEMPOTENCY_KEY_REUSED; while the first is still "
    "running → 409 IDEMPOTENCY_KEY_IN_USE. Errors are not recorded (a retry runs again). "
    "Kept IDEMPOTENCY_TTL_HOURS.",
)


# The trader API's (core.api.views.TraderApiView) answers on every operation.
TRADER_COMMON_ERRORS = {
    401: OpenApiResponse(ERROR_BODY, description="MISSING_CREDENTIALS or INVALID_API_KEY"),
    403: OpenApiResponse(ERROR_BODY, description="CSRF_FAILED (session callers, unsafe methods)"),
    429: OpenApiResponse(ERROR_BODY, description="RATE_LIMIT_EXCEEDED (Retry-After)"),
}
TRADER_NOT_FOUND = {404: OpenApiResponse(ERROR_BODY, description="NOT_FOUND (also: not yours)")}


# Reads with query parameters: a bad parameter is 422; a paged list also refuses a cursor
# that is not its own (core.pagination).
QUERY_ERRORS = {
    422: OpenApiResponse(ERROR_BODY, description="VALIDATION_FAILED: a query parameter (details)")
}
CURSOR_ERRORS = {
    400: OpenApiResponse(
        ERROR_BODY,
        description="INVALID_CURSOR: the cursor is not one this list with these filters issued",
    )
}


def error_response(description: str) -> OpenApiResponse:
    return OpenApiResponse(ERROR_BODY, description=description)


def page_serializer(name: str, item: type[serializers.Serializer]) -> serializers.Serializer:
    """A keyset page of `item`s (core.pagination)."""
    return inline_serializer(
        name,
        fields={
            "data": item(many=True),
            "next_cursor": serializers.CharField(allow_null=True),
            "has_more": serializers.BooleanField(),
        },
    )


SERVICE_UNAVAILABLE_DOC = (
    "SERVICE_UNAVAILABLE: PostgreSQL or Redis cannot be reached right now (`details.service` "
    "says which); nothing was changed unless the operation's description says otherwise. "
    "Retry after `Retry-After` seconds, with the same client_order_id or Idempotency-Key "
    "for writes."
)
_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options", "trace"})


def _document_service_unavailable(paths: dict[str, Any]) -> None:
    """Every operation needs PostgreSQL (authentication reads it) and most need Redis, so
    every one can answer 503 SERVICE_UNAVAILABLE (core.exceptions.service_unavailable): added
    here once, or appended to an operation's own 503 (MARKET_NOT_READY, STALE_BOOK...)."""
    retry_after = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait"}}
    for item in paths.values():
        for method, operation in item.items():
            if method not in _HTTP_METHODS:
                continue
            responses = operation.setdefault("responses", {})
            existing = responses.get("503")
            if existing is None:
                responses["503"] = {
                    "description": SERVICE_UNAVAILABLE_DOC,
                    "headers": retry_after,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
            elif SERVICE_UNAVAILABLE_DOC not in existing.get("description", ""):
                existing["description"] = f"{existing.get('description', '')}; or " + (
                    SERVICE_UNAVAILABLE_DOC
                )
                existing.setdefault("headers", retry_after)


def schema_postprocess_for(codes: tuple[type[DomainError], ...]) -> Any:
    """A drf-spectacular postprocessing hook: canonical paths (routes accept an optional
    trailing slash; the documented form has none), the 503 every operation can answer, and
    the API's error-code catalogue, generated from core.errors so the two can never drift."""

    def postprocess(result: dict[str, Any], generator: Any, request: Any, public: bool) -> Any:
        result["paths"] = {
            (path.rstrip("/") if path != "/" else path): item
            for path, item in result["paths"].items()
        }
        _document_service_unavailable(result["paths"])
        rows = "\n".join(f"| `{e.code}` | {e.status} | {e.default_message} |" for e in codes)
        result["info"]["description"] += (
            "\n\n## Error codes\n\n| code | HTTP | meaning |\n|---|---|---|\n" + rows
        )
        result["info"]["x-error-codes"] = [{"code": e.code, "status": e.status} for e in codes]
        return result

    return postprocess
