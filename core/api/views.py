"""The base views of both APIs. EdgeApiView applies, in order: the caller's credentials (the
subclass's `authenticate_caller`) → the rate limit → the subclass's `authorize` → the view,
with Idempotency-Key handling around the unsafe methods it names, and stamps the X-RateLimit-*
headers on every response, errors included. PartnerApiView (partners.apis) and TraderApiView
(below) differ only in who the caller is and which limits apply."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from django.conf import settings
from django.utils.module_loading import import_string
from rest_framework.authentication import CSRFCheck
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core import errors
from core.api.idempotency import idempotent_call
from core.api.ratelimit import rate_limit_check

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class RateLimitHeadersMixin:
    """Stamps the X-RateLimit-* headers computed during `initial()` (self._rate_headers) on
    every response of the view, errors included."""

    _rate_headers: dict[str, str]

    def finalize_response(self, request: Any, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        for name, value in getattr(self, "_rate_headers", {}).items():
            response[name] = value
        return response


@dataclass(frozen=True)
class EdgeCaller:
    """Who is calling, as the edge needs it: the rate-limit buckets (`limit_scope` counts all of
    the caller's credentials, `limit_key` one of them) and their limits, and the
    Idempotency-Key scope (exactly one of `tenant` / `user`)."""

    limit_scope: int
    limit_key: str
    per_second: int
    per_minute: int
    tenant: Any = None
    user: Any = None


def presented_key(request: Request) -> str | None:
    """The API key the caller sent, if any: X-API-Key wins over Authorization: Bearer."""
    key = request.headers.get("X-API-Key", "").strip()
    if key:
        return key
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


class EdgeApiView(RateLimitHeadersMixin, APIView):
    """Base of every API view; see the module docstring."""

    #: unsafe methods wrapped in Idempotency-Key handling
    idempotent_methods: ClassVar[frozenset[str]] = frozenset()
    #: exceptions whose effects commit under an Idempotency-Key (core.api.idempotency)
    idempotency_commit_on: ClassVar[tuple[type[BaseException], ...]] = ()

    def authenticate_caller(self, request: Request) -> EdgeCaller:
        raise NotImplementedError

    def authorize(self, request: Request) -> None:
        """Checks after the rate limit (the partner API's scopes); none by default."""

    def idempotency_path(self, request: Request) -> str:
        return request.path

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        caller = self.authenticate_caller(request)
        self.edge_caller = caller
        limit = rate_limit_check(
            tenant_id=caller.limit_scope,
            key_prefix=caller.limit_key,
            per_second=caller.per_second,
            per_minute=caller.per_minute,
        )
        self._rate_headers = limit.headers()
        if not limit.allowed:
            raise errors.RateLimitExceeded(headers={"Retry-After": str(limit.retry_after or 1)})
        self.authorize(request)
        method = (request.method or "").upper()
        if method in self.idempotent_methods and hasattr(self, method.lower()):
            handler = getattr(self, method.lower())
            setattr(self, method.lower(), functools.partial(self._idempotent, handler))

    def _idempotent(
        self, handler: Callable[..., Response], request: Request, *args: Any, **kwargs: Any
    ) -> Response:
        caller = self.edge_caller
        return idempotent_call(
            tenant=caller.tenant,
            user=caller.user,
            key=request.headers.get("Idempotency-Key"),
            method=request.method or "",
            path=self.idempotency_path(request),
            body=request._request.body,
            call=lambda: handler(request, *args, **kwargs),
            commit_on=self.idempotency_commit_on,
        )


def _enforce_csrf(request: Request) -> None:
    """Django's CSRF check, as DRF's SessionAuthentication runs it: views under DRF are
    csrf_exempt, so a session-authenticated unsafe request is checked here."""
    check = CSRFCheck(lambda _request: None)  # type: ignore[arg-type,return-value]
    django_request = request._request
    check.process_request(django_request)
    reason = check.process_view(django_request, None, (), {})  # type: ignore[arg-type]
    if reason:
        raise errors.CsrfFailed(details={"reason": str(reason)})


@functools.cache
def _trader_key_authenticate() -> Callable[[str], Any]:
    """settings.TRADER_KEY_AUTHENTICATE (accounts' trader key check), resolved once."""
    return import_string(settings.TRADER_KEY_AUTHENTICATE)  # type: ignore[no-any-return]


class TraderApiView(EdgeApiView):
    """Base of every native trader endpoint (/v1/*): a personal trader API key (`tk_…` in
    X-API-Key or Authorization: Bearer), else the Django session — with CSRF enforced on unsafe
    methods, since a browser sends the session cookie on its own. Anything presented as a key
    is checked as one: no fallback to the session, so a bad key is always an error. After
    `initial`, `self.user` (also `request.user`) is the caller and `self.credential` says how
    they authenticated (`key:<prefix>` or `session`). POST and DELETE take an
    Idempotency-Key, scoped per user; the query string is part of the fingerprint (DELETE
    /v1/orders?account_id=… has no body)."""

    idempotent_methods = frozenset({"POST", "DELETE"})
    user: Any
    credential: str

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        # Read before DRF's own (empty) authentication overwrites it with None.
        self._session_user = getattr(request._request, "user", None)
        super().initial(request, *args, **kwargs)

    def authenticate_caller(self, request: Request) -> EdgeCaller:
        raw_key = presented_key(request)
        if raw_key is not None:
            key = _trader_key_authenticate()(raw_key)
            user, credential = key.user, f"key:{key.prefix}"
        else:
            session_user = self._session_user
            if session_user is None or not session_user.is_authenticated:
                raise errors.MissingCredentials()
            if (request.method or "").upper() not in _SAFE_METHODS:
                _enforce_csrf(request)
            user, credential = session_user, "session"
        self.user, self.credential = user, credential
        request.user = user
        # The partner limiter in its own id space: negative "tenant" ids are users (the user
        # bucket counts all their credentials; the key bucket one key or the session).
        return EdgeCaller(
            limit_scope=-int(user.pk),
            limit_key=credential,
            per_second=int(settings.RATE_LIMIT_DEFAULT_PER_SECOND),
            per_minute=int(settings.RATE_LIMIT_DEFAULT_PER_MINUTE),
            user=user,
        )

    def idempotency_path(self, request: Request) -> str:
        return request.get_full_path()
