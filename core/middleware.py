"""Request-id propagation and the last line of defence for API error bodies."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable

from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest

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


class InputGuardMiddleware:
    """One gate for what no view can use: a NUL character (U+0000, `%00`) in the path or in
    a query string's names or values. PostgreSQL text cannot hold it, so past this point it
    would be a 500 in whichever query met it first. API paths get the envelope (a path:
    404 NOT_FOUND, as any unknown id; a query string: 422 VALIDATION_FAILED naming the
    parameter); pages get a plain 400."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "\x00" in request.path:
            if is_api_path(request):
                return error_response(errors.NotFound())
            return HttpResponseBadRequest("A NUL character is not allowed in a URL.")
        query = request.META.get("QUERY_STRING", "")
        if "%00" in query or "\x00" in query:  # the only ways a decoded NUL can arrive
            names = sorted(
                {
                    name.replace("\x00", "") or "query"
                    for name, values in request.GET.lists()
                    if "\x00" in name or any("\x00" in v for v in values)
                }
            )
            if names and is_api_path(request):
                return error_response(
                    errors.ValidationFailed(
                        details={n: ["must not contain NUL characters"] for n in names}
                    )
                )
            if names:
                return HttpResponseBadRequest("A NUL character is not allowed in a query string.")
        return self.get_response(request)


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
