"""One place that turns exceptions into the error envelope.

DRF calls `api_exception_handler` for exceptions raised inside API views; Django's
handler404/handler500 and `core.middleware.ApiErrorMiddleware` cover everything else under
/v1/ (unknown routes, errors outside DRF), so no HTML page or traceback reaches a client.

A request that needs PostgreSQL or Redis while it is down gets 503 SERVICE_UNAVAILABLE with
Retry-After, never 500: `service_unavailable` is the one mapping, used by all three exits
(docs/operations.md "When PostgreSQL or Redis is down").
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.template import loader
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

from core import errors

logger = logging.getLogger("polysim.errors")

API_PREFIX = "/v1/"

# What a client is told to wait before retrying a 503: the processes reconnect on their own
# within seconds of a service's return (docs/operations.md).
RETRY_AFTER_SECONDS = 2


def service_unavailable(exc: BaseException) -> errors.DomainError | None:
    """SERVICE_UNAVAILABLE (with Retry-After and the service in `details`) when `exc` says
    PostgreSQL or Redis cannot serve (core.errors.service_down); None for any other
    exception. Logged as a warning without a traceback: an outage produces one line per
    request, not a page each."""
    service = errors.service_down(exc)
    if service is None:
        return None
    logger.warning("%s unavailable: %s: %s", service, type(exc).__name__, str(exc)[:200])
    return errors.ServiceUnavailable(
        f"A backing service ({service}) is unavailable; retry shortly.",
        details={"service": service},
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def service_unavailable_page() -> HttpResponse:
    """The web UI's 503: a standalone page rendered without context processors (they would
    reach for the session and the user, i.e. the database that may be the one down)."""
    response = HttpResponse(loader.get_template("503.html").render(), status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def error_response(exc: errors.DomainError) -> JsonResponse:
    """A plain Django response carrying the envelope (for non-DRF paths)."""
    response = JsonResponse(exc.as_body(), status=exc.status)
    _decorate(response, exc)
    return response


def _decorate(response: HttpResponse | Response, exc: errors.DomainError) -> None:
    response["X-Error-Code"] = exc.code
    if exc.status == 503:  # every 503 says when to come back, unless its error says otherwise
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    for name, value in exc.headers.items():
        response[name] = value


def _flatten_validation(detail: Any) -> dict[str, Any]:
    """DRF's ValidationError detail → {field: [messages]} with plain strings."""
    if isinstance(detail, dict):
        return {str(k): _flatten_messages(v) for k, v in detail.items()}
    return {"non_field_errors": _flatten_messages(detail)}


def _flatten_messages(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _flatten_messages(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_flatten_messages(v) for v in value]
    return str(value)


def to_domain_error(exc: Exception) -> errors.DomainError | None:
    """Map framework exceptions onto our catalogue; None for unexpected exceptions."""
    if isinstance(exc, errors.DomainError):
        return exc
    if isinstance(exc, drf_exceptions.ParseError):
        return errors.MalformedJson(details={"reason": str(exc.detail)})
    if isinstance(exc, drf_exceptions.UnsupportedMediaType):
        return errors.MalformedJson("Send the body as application/json.")
    if isinstance(exc, drf_exceptions.ValidationError):
        return errors.ValidationFailed(details=_flatten_validation(exc.detail))
    if isinstance(exc, drf_exceptions.MethodNotAllowed):
        return errors.MethodNotAllowed()
    if isinstance(exc, (drf_exceptions.NotFound, Http404)):
        return errors.NotFound()
    if isinstance(exc, drf_exceptions.NotAuthenticated):
        return errors.MissingApiKey()
    if isinstance(exc, drf_exceptions.AuthenticationFailed):
        return errors.InvalidApiKey()
    if isinstance(exc, (drf_exceptions.PermissionDenied, PermissionDenied)):
        return errors.InsufficientPermission()
    if isinstance(exc, drf_exceptions.Throttled):
        return errors.RateLimitExceeded()
    if isinstance(exc, drf_exceptions.NotAcceptable):
        return errors.ValidationFailed("Only application/json responses are available.")
    return service_unavailable(exc)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    domain = to_domain_error(exc)
    if domain is None:
        return None  # re-raised by DRF; ApiErrorMiddleware logs it and renders INTERNAL_ERROR
    response = Response(domain.as_body(), status=domain.status)
    _decorate(response, domain)
    return response


def is_api_path(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_path(request):
        return error_response(errors.NotFound())
    from django.views.defaults import page_not_found

    return page_not_found(request, exception or Http404())


def handler500(request: HttpRequest) -> HttpResponse:
    # Reached for exceptions no view-level handler saw (raised by a middleware, e.g. a session
    # save on a database that just went away): Django calls this inside its except block.
    down = service_unavailable(exc) if (exc := sys.exc_info()[1]) is not None else None
    if down is not None:
        return error_response(down) if is_api_path(request) else service_unavailable_page()
    if is_api_path(request):
        return error_response(errors.InternalError())
    from django.views.defaults import server_error

    return server_error(request)
