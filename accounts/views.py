"""Trader-facing pages: the login-link landing and confirmation, sign-out and the signed-in
landing page. Server-rendered; no JavaScript.

Link flow (reliability.md T9): GET/HEAD /login/t/<token> only parks the token's hash in the
session and redirects, so mail scanners that prefetch links burn nothing and the token leaves
the address bar, history and Referer. POST /login/confirm is the only consumer. Every
failure (no token in the session, unknown, expired, used, inactive user) renders the same
page with the same status, 410 Gone, so nothing reveals which it was.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Decimal
from functools import wraps

from django.contrib.auth import login, logout
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from accounts.models import Account
from accounts.services import (
    login_redirect_resolve,
    login_token_consume_hash,
    login_token_get_pending,
    login_token_hash,
)

SESSION_TOKEN_KEY = "login_link_token_hash"
LINK_DEAD_STATUS = 410
AUTH_BACKEND = "django.contrib.auth.backends.ModelBackend"
# What our tokens look like (43 url-safe base64 characters); other input is not worth hashing.
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_CENTS = Decimal("0.01")

View = Callable[..., HttpResponse]


def private_page(view: View) -> View:
    """No caching anywhere and no Referer to the next site: these pages are reached with a
    credential (the link) or show a trader's own data."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        response = view(request, *args, **kwargs)
        response["Referrer-Policy"] = "no-referrer"
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
    login(request, token.user, backend=AUTH_BACKEND)
    return HttpResponseRedirect(login_redirect_resolve(token=token))


@require_safe
@private_page
def login_page(request: HttpRequest) -> HttpResponse:
    return render(request, "accounts/login.html")


@require_POST
@private_page
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return redirect("accounts:login")


def _account_row(account: Account) -> dict[str, str]:
    tenant = account.tenant
    return {
        "name": account.external_id or "Personal",
        "managed_by": f"Managed by {tenant.name}" if tenant is not None else "Personal",
        "stage": account.get_stage_display() if account.stage else "—",
        "status": account.get_status_display(),
        "status_class": account.status,
        "cash": f"{account.cash.quantize(_CENTS, rounding=ROUND_HALF_EVEN):,}",
    }


@require_safe
@login_required
@private_page
def app_home(request: HttpRequest) -> HttpResponse:
    """The signed-in landing page: who you are and the accounts you hold."""
    accounts = sorted(
        Account.objects.filter(owner_id=request.user.pk).select_related("tenant"),
        key=lambda a: (a.tenant is not None, a.tenant.name if a.tenant else "", a.created_at),
    )
    return render(
        request, "accounts/app_home.html", {"accounts": [_account_row(a) for a in accounts]}
    )
