"""Request-id propagation and the last line of defence for API error bodies."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable

from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse

from core import errors
from core.exceptions import (
    error_response,
    is_api_path,
    service_unavailable,
    service_unavailable_page,
)

logger = logging.getLogger("polysim.errors")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

# Statuses Django itself may produce on /v1/ paths without going through DRF
# (unresolved URL in DEBUG, CSRF failure, oversized body...). Mapped to our codes.
_STATUS_FALLBACK: dict[int, type[errors.DomainError]] = {
    400: errors.MalformedJson,
    401: errors.MissingApiKey,
    403: errors.InsufficientPermission,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    429: errors.RateLimitExceeded,
    503: errors.ServiceUnavailable,
}


class RequestIdMiddleware:
    """Echo the caller's X-Request-Id when it is sane, otherwise mint one; every response
    carries it, and log records can use `request.request_id`."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-Id", "")
        request_id = incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        request.request_id = request_id  # type: ignore[attr-defined]
        response = self.get_response(request)
        response["X-Request-Id"] = request_id
        return response


class ApiErrorMiddleware:
    """On /v1/ paths: uncaught exceptions become INTERNAL_ERROR (or SERVICE_UNAVAILABLE when
    PostgreSQL or Redis is unreachable) and any error response Django produced outside DRF is
    rewritten into the envelope. Never an HTML page or a traceback, even with DEBUG on. On
    every other path (the web UI) an unreachable service is a plain 503 page, not a 500."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            is_api_path(request)
            and response.status_code >= 400
            and not response.has_header("X-Error-Code")
        ):
            error_cls = _STATUS_FALLBACK.get(response.status_code, errors.InternalError)
            rewritten = error_response(error_cls())
            if response.status_code != rewritten.status_code:
                rewritten.status_code = response.status_code
            return rewritten
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        down = service_unavailable(exception)
        if down is not None:
            return error_response(down) if is_api_path(request) else service_unavailable_page()
        if not is_api_path(request):
            return None
        if isinstance(exception, (Http404, PermissionDenied, SuspiciousOperation, BadRequest)):
            return None  # Django renders its 4xx; __call__ rewrites it into the envelope
        logger.exception(
            "unhandled error on %s %s (request %s)",
            request.method,
            request.path,
            getattr(request, "request_id", "-"),
        )
        return error_response(errors.InternalError())
