"""Trader-facing pages: retail sign-in (ask for a link by email), the login-link landing and
confirmation, sign-out, and /app/ (the partner flow's default landing, now the portfolio).
Server-rendered; no JavaScript.

Link flow: GET/HEAD /login/t/<token> only parks the token's hash in the
session and redirects, so mail scanners that prefetch links burn nothing and the token leaves
the address bar, history and Referer. POST /login/confirm is the only consumer. Every
failure (no token in the session, unknown, expired, used, inactive user) renders the same
page with the same status, 410 Gone, so nothing reveals which it was.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.contrib.auth import login, logout
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from accounts.forms import LoginLinkForm
from accounts.services import (
    login_redirect_resolve,
    login_token_consume_hash,
    login_token_get_pending,
    login_token_hash,
)
from accounts.services.login import login_link_request_retail
from accounts.services.wallets import personal_account_ensure
from core import errors

SESSION_TOKEN_KEY = "login_link_token_hash"
LINK_DEAD_STATUS = 410
AUTH_BACKEND = "django.contrib.auth.backends.ModelBackend"
# What our tokens look like (43 url-safe base64 characters); other input is not worth hashing.
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")

View = Callable[..., HttpResponse]


def private_page(view: View) -> View:
    """No caching anywhere and no Referer to another site: these pages are reached with a
    credential (the link) or show a trader's own data.

    `same-origin`, not `no-referrer`: under `no-referrer` browsers send `Origin: null` on
    the page's own form POSTs, which Django's CSRF origin check rightly refuses, so the
    "Sign in" button of the confirmation page failed with 403 in every real browser."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        response = view(request, *args, **kwargs)
        response["Referrer-Policy"] = "same-origin"
        return response

    return never_cache(wrapped)


def _link_dead(request: HttpRequest) -> HttpResponse:
    request.session.pop(SESSION_TOKEN_KEY, None)
    return render(request, "accounts/link_dead.html", status=LINK_DEAD_STATUS)


@require_safe
@private_page
def login_link_open(request: HttpRequest, token: str) -> HttpResponse:
    """GET/HEAD of the emailed link: remember it, consume nothing, drop it from the URL."""
    if _TOKEN_SHAPE.match(token):
        # Only the hash goes into the (database-backed) session: the same value the token
        # row already holds, so a session dump still yields no usable link.
        request.session[SESSION_TOKEN_KEY] = login_token_hash(token)
    else:
        request.session.pop(SESSION_TOKEN_KEY, None)
    return redirect("accounts:login-confirm")


@require_http_methods(["GET", "HEAD", "POST"])
@private_page
def login_confirm(request: HttpRequest) -> HttpResponse:
    """GET: "Sign in as <email>?" with a POST form. POST: consume the token, sign in with a
    new session id and redirect to the token's (re-checked) destination."""
    token_hash = request.session.get(SESSION_TOKEN_KEY)
    if not isinstance(token_hash, str):
        return _link_dead(request)
    if request.method != "POST":
        pending = login_token_get_pending(token_hash=token_hash)
        if pending is None:
            return _link_dead(request)
        return render(
            request,
            "accounts/login_confirm.html",
            {
                "email": pending.user.email,
                "tenant_name": pending.tenant.name if pending.tenant is not None else "",
            },
        )
    token = login_token_consume_hash(token_hash=token_hash)
    if token is None:
        return _link_dead(request)
    request.session.pop(SESSION_TOKEN_KEY, None)
    if request.user.is_authenticated:
        # login() keeps the session id when the same user is already signed in; a
        # sign-in must always get a fresh one.
        request.session.cycle_key()
    if token.tenant_id is None:
        # A retail link: the first confirmed sign-in opens the personal account.
        personal_account_ensure(user=token.user)
    login(request, token.user, backend=AUTH_BACKEND)
    return HttpResponseRedirect(login_redirect_resolve(token=token))


def client_ip(request: HttpRequest) -> str:
    """The client's address: the socket peer, or with CLIENT_IP_PROXY_COUNT = n trusted
    proxies, the n-th X-Forwarded-For entry from the right (the one our first proxy saw;
    entries further left are whatever the client chose to send)."""
    hops = int(settings.CLIENT_IP_PROXY_COUNT)
    if hops > 0:
        forwarded = [
            part.strip()
            for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
            if part.strip()
        ]
        if len(forwarded) >= hops:
            return forwarded[-hops][:64]
    return str(request.META.get("REMOTE_ADDR") or "unknown")[:64]


def client_ip_address(request: HttpRequest) -> str | None:
    """`client_ip` when it is an IP address, else None (a request made in-process, as
    Django's test client's force_login, has no peer): what django-axes stores."""
    candidate = client_ip(request)
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None


def _minutes(seconds: str | None) -> int:
    try:
        return max(1, math.ceil(int(seconds or "60") / 60))
    except ValueError:
        return 60


@require_http_methods(["GET", "HEAD", "POST"])
@private_page
def login_page(request: HttpRequest) -> HttpResponse:
    """GET: the email form. POST: ask for a link; every accepted request answers with the
    same redirect to "check your inbox", whether or not the email was known."""
    if request.method != "POST":
        return render(request, "accounts/login.html", {"form": LoginLinkForm()})
    form = LoginLinkForm(request.POST)
    if not form.is_valid():
        return render(request, "accounts/login.html", {"form": form}, status=400)
    try:
        login_link_request_retail(email=form.cleaned_data["email"], client_ip=client_ip(request))
    except (errors.RateLimitExceeded, errors.LoginLinkThrottled) as exc:
        retry_after = exc.headers.get("Retry-After")
        if isinstance(exc, errors.LoginLinkThrottled):
            message = "Too many sign-in links were sent to this address in the last hour."
        else:
            message = "Too many sign-in requests came from your network in the last hour."
        response = render(
            request,
            "accounts/login.html",
            {
                "form": form,
                "throttle_message": f"{message} Try again in {_minutes(retry_after)} minutes.",
            },
            status=429,
        )
        if retry_after:
            response["Retry-After"] = retry_after
        return response
    return HttpResponseRedirect(reverse("accounts:login-sent"))


@require_safe
@private_page
def login_sent(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "accounts/login_sent.html",
        {"valid_minutes": max(1, int(settings.LOGIN_LINK_TTL_SECONDS) // 60)},
    )


@require_POST
@private_page
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return redirect("accounts:login")


@require_safe
@login_required
@private_page
def app_home(request: HttpRequest) -> HttpResponse:
    """The partner flow's default landing page: the portfolio (query string kept, so
    "/app/?account=<id>" opens that account)."""
    target = reverse("web:portfolio")
    query = request.META.get("QUERY_STRING", "")
    return HttpResponseRedirect(f"{target}?{query}" if query else target)
