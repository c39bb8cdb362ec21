"""A request that needs PostgreSQL or Redis while it is down answers 503 SERVICE_UNAVAILABLE
(the envelope with X-Error-Code and Retry-After on /v1/, a plain page on the web UI), never
500; any other exception stays a 500 (docs/operations.md "When PostgreSQL or Redis is down").
The real outages are in tests/faults; this pins the one mapping through every exit: a DRF
view, a plain Django view under /v1/, a web page, and a middleware after the view."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import redis
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import path
from rest_framework.request import Request
from rest_framework.views import APIView

from core import exceptions

RAISES: dict[str, Callable[[], BaseException]] = {
    "redis-refused": lambda: redis.ConnectionError("Error 111 connecting. Connection refused."),
    "redis-loading": lambda: redis.exceptions.BusyLoadingError("Redis is loading the dataset"),
    "redis-timeout": lambda: redis.TimeoutError("Timeout reading from socket"),
    "redis-readonly": lambda: redis.exceptions.ReadOnlyError("You can't write against a replica"),
    "pg-operational": lambda: OperationalError("server closed the connection unexpectedly"),
    "pg-interface": lambda: InterfaceError("connection already closed"),
    "pg-driver": lambda: psycopg.OperationalError("connection failed"),
}
SERVICE = {kind: kind.split("-", 1)[0].replace("pg", "postgresql") for kind in RAISES}


def _raise(kind: str) -> Any:
    if kind == "ok":
        return HttpResponse("ok")
    raise RAISES[kind]() if kind in RAISES else ValueError("a bug, not an outage")


class _DrfView(APIView):
    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []

    def get(self, request: Request, kind: str) -> HttpResponse:
        return _raise(kind)  # type: ignore[no-any-return]


def _plain_view(request: HttpRequest, kind: str) -> HttpResponse:
    return _raise(kind)  # type: ignore[no-any-return]


urlpatterns = [
    path("v1/drf/<str:kind>", _DrfView.as_view()),
    path("v1/plain/<str:kind>", _plain_view),
    path("web/<str:kind>", _plain_view),
]
handler500 = exceptions.handler500  # as config/urls.py


@pytest.fixture
def client(settings: Any) -> Client:
    settings.ROOT_URLCONF = __name__
    return Client(raise_request_exception=False)


@pytest.mark.parametrize("kind", sorted(RAISES))
@pytest.mark.parametrize("prefix", ["/v1/drf/", "/v1/plain/"])
def test_api_answers_503_in_the_envelope(client: Client, prefix: str, kind: str) -> None:
    response = client.get(prefix + kind)

    assert response.status_code == 503
    assert response["X-Error-Code"] == "SERVICE_UNAVAILABLE"
    assert int(response["Retry-After"]) > 0
    body = response.json()
    assert body["error"] == "SERVICE_UNAVAILABLE"
    assert body["details"] == {"service": SERVICE[kind]}
    assert "Traceback" not in body["message"]


@pytest.mark.parametrize("kind", sorted(RAISES))
def test_web_page_answers_a_plain_503(client: Client, kind: str) -> None:
    response = client.get("/web/" + kind)

    assert response.status_code == 503
    assert response["Content-Type"].startswith("text/html")
    assert int(response["Retry-After"]) > 0
    assert b"Temporarily unavailable" in response.content


@pytest.mark.parametrize("url", ["/v1/drf/bug", "/v1/plain/bug"])
def test_other_api_exceptions_stay_internal_errors(client: Client, url: str) -> None:
    response = client.get(url)

    assert response.status_code == 500
    assert response.json()["error"] == "INTERNAL_ERROR"


def test_other_web_exceptions_stay_500(client: Client) -> None:
    assert client.get("/web/bug").status_code == 500


class _FailsAfterTheView:
    """A middleware outside ApiErrorMiddleware whose response step hits the database (as the
    session middleware's save does): only handler500 sees that exception."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        self.get_response(request)
        raise OperationalError("the server closed the connection during the session save")


@pytest.mark.parametrize(("url", "json_body"), [("/v1/plain/ok", True), ("/web/ok", False)])
def test_a_database_outage_in_a_middleware_is_503(settings: Any, url: str, json_body: bool) -> None:
    settings.ROOT_URLCONF = __name__
    settings.MIDDLEWARE = [
        "core.middleware.RequestIdMiddleware",
        f"{__name__}._FailsAfterTheView",
        "core.middleware.ApiErrorMiddleware",
    ]
    response = Client(raise_request_exception=False).get(url)

    assert response.status_code == 503
    assert int(response["Retry-After"]) > 0
    if json_body:
        assert response.json()["error"] == "SERVICE_UNAVAILABLE"
    else:
        assert b"Temporarily unavailable" in response.content
