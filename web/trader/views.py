"""Portfolio, leaderboard and API keys pages.

Server-rendered; htmx swaps fragments for cancels and history paging, and every form also
works without JavaScript (a plain POST answers with a redirect back to the page). Every
unsafe request goes through Django's CSRF middleware (htmx sends the token from the
body's hx-headers). Writes call the services (trading.services.cancel,
accounts.services.trader_keys); errors reach the trader as plain sentences.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from accounts.models import Account, TraderApiKey, User
from accounts.services import trader_key_create, trader_key_revoke
from accounts.views import private_page
from core import errors
from core.errors import DomainError
from core.money import pct
from trading.models import Order
from trading.selectors import account_state
from trading.services.cancel import order_cancel, order_cancel_account
from web.trader import selectors
from web.trader.forms import ApiKeyCreateForm

# What a trader reads when a cancel is refused; the code stays in the log and the API.
_CANCEL_MESSAGES = {
    "ILLEGAL_TRANSITION": "This order has already finished (filled, expired or rejected), "
    "so there is nothing left to cancel.",
    "NOT_FOUND": "This order no longer exists on this account.",
    "ACCOUNT_CLOSED": "This account is closed, so its orders cannot be changed.",
}


def _is_htmx(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"


def _user(request: HttpRequest) -> User:
    user = request.user
    assert isinstance(user, User)  # login_required ran first
    return user


def _portfolio_url(account: Account, anchor: str = "") -> str:
    return f"{reverse('web:portfolio')}?account={account.pk}{anchor}"


# --- Portfolio ------------------------------------------------------------------------------
def _summary(account: Account, user: User) -> dict[str, Any]:
    state = account_state(account_id=account.pk, tenant=account.tenant, owner_id=user.pk)
    if state is None:  # deleted between the two reads: as good as never there
        raise Http404("no such account")
    row = state["account"]
    pnl = state["equity"] - row.starting_balance
    return {
        **state,
        "starting_balance": row.starting_balance,
        "pnl": pnl,
        "pnl_pct": pct(pnl, row.starting_balance),
    }


def _orders_context(account: Account) -> dict[str, Any]:
    rows, total = selectors.open_orders(account=account)
    return {
        "orders": rows,
        "orders_total": total,
        "orders_truncated": total > len(rows),
        "read_only": account.is_closed,
    }


def _history_context(account: Account, before: str | None) -> dict[str, Any]:
    page = selectors.fill_history_page(
        account=account, before=before, limit=selectors.HISTORY_PAGE_SIZE
    )
    return {"history": page.items, "older_cursor": page.older_cursor}


def _bad_request(request: HttpRequest, message: str) -> HttpResponse:
    return render(request, "web/trader/error.html", {"message": message}, status=400)


def _owned_account(request: HttpRequest, raw_id: str | None) -> Account:
    """The signed-in trader's account `raw_id`, tenant joined; 404 for a malformed id or
    anyone else's account (indistinguishable)."""
    accounts = selectors.trader_accounts(user=_user(request))
    account = selectors.account_pick(accounts=accounts, requested=raw_id or "-")
    if account is None:
        raise Http404("no such account")
    return account


@require_safe
@login_required
@private_page
def portfolio(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    accounts = selectors.trader_accounts(user=user)
    account = selectors.account_pick(accounts=accounts, requested=request.GET.get("account"))
    if account is None:
        if accounts or request.GET.get("account"):
            raise Http404("no such account")
        return render(request, "web/trader/portfolio_empty.html")
    try:
        history = _history_context(account, request.GET.get("before"))
    except errors.InvalidCursor:
        return _bad_request(request, "This history link is no longer valid for this account.")
    summary = _summary(account, user)
    context = {
        "accounts": accounts,
        "account": account,
        "summary": summary,
        # A closed account's chart ends at its last measurement, not at today's marks.
        "chart": selectors.equity_chart(
            account=account, current_equity=None if account.is_closed else summary["equity"]
        ),
        **_orders_context(account),
        **history,
        "paged": bool(request.GET.get("before")),
    }
    return render(request, "web/trader/portfolio.html", context)


@require_safe
@login_required
@private_page
def history_rows(request: HttpRequest) -> HttpResponse:
    """The next (older) page of history rows, for htmx's "Load older" (which replaces its
    own row with these rows and a new button)."""
    account = _owned_account(request, request.GET.get("account"))
    try:
        history = _history_context(account, request.GET.get("before"))
    except errors.InvalidCursor:
        return _bad_request(request, "This history link is no longer valid for this account.")
    return render(request, "web/trader/_history_rows.html", {"account": account, **history})


def _after_cancel(
    request: HttpRequest, account: Account, *, message: str, ok: bool
) -> HttpResponse:
    """htmx: the open-orders section (with the message) and, out of band, the summary whose
    available cash just changed. Plain form post: back to the portfolio with the message."""
    if not _is_htmx(request):
        (messages.success if ok else messages.error)(request, message)
        return HttpResponseRedirect(_portfolio_url(account, "#open-orders"))
    context = {
        "account": account,
        "summary": _summary(account, _user(request)),
        "notice": message,
        "notice_ok": ok,
        "oob_summary": True,
        **_orders_context(account),
    }
    return render(request, "web/trader/_orders_response.html", context)


@require_POST
@login_required
@private_page
def order_cancel_view(request: HttpRequest, order_id: uuid.UUID) -> HttpResponse:
    user = _user(request)
    order = (
        Order.objects.select_related("account__tenant")
        .filter(pk=order_id, account__owner_id=user.pk)
        .first()
    )
    if order is None:
        raise Http404("no such order")
    account = order.account
    if account.is_closed:
        return _after_cancel(request, account, message=_CANCEL_MESSAGES["ACCOUNT_CLOSED"], ok=False)
    try:
        order_cancel(account_id=account.pk, order_id=order.pk, reason="USER")
    except DomainError as exc:
        message = _CANCEL_MESSAGES.get(exc.code, exc.message)
        return _after_cancel(request, account, message=message, ok=False)
    return _after_cancel(request, account, message="Order canceled.", ok=True)


@require_POST
@login_required
@private_page
def orders_cancel_all_view(request: HttpRequest) -> HttpResponse:
    account = _owned_account(request, request.POST.get("account"))
    if account.is_closed:
        return _after_cancel(request, account, message=_CANCEL_MESSAGES["ACCOUNT_CLOSED"], ok=False)
    try:
        count = order_cancel_account(account_id=account.pk, reason="USER")
    except DomainError as exc:
        return _after_cancel(request, account, message=exc.message, ok=False)
    if count == 0:
        message = "There were no open orders to cancel."
    else:
        message = f"{count} open order{'s' if count != 1 else ''} canceled."
    return _after_cancel(request, account, message=message, ok=True)


# --- Leaderboard ----------------------------------------------------------------------------
@require_safe
def leaderboard(request: HttpRequest) -> HttpResponse:
    viewer = request.user.pk if request.user.is_authenticated else None
    board = selectors.leaderboard(viewer_id=viewer)
    me_outside = board.me is not None and all(
        r.account_id != board.me.account_id for r in board.rows
    )
    return render(
        request,
        "web/trader/leaderboard.html",
        {
            "board": board,
            "me_outside": me_outside,
            "viewer_id": viewer,
            "default_balance": settings.PERSONAL_ACCOUNT_DEFAULT_BALANCE,
        },
    )


# --- API keys -------------------------------------------------------------------------------
def _keys_page(
    request: HttpRequest,
    *,
    form: ApiKeyCreateForm | None = None,
    created: TraderApiKey | None = None,
    raw_key: str | None = None,
    status: int = 200,
) -> HttpResponse:
    keys = list(
        TraderApiKey.objects.filter(user_id=_user(request).pk).order_by("revoked_at", "-created_at")
    )
    context = {
        "form": form or ApiKeyCreateForm(),
        "keys": [k for k in keys if k.is_active],
        "revoked": [k for k in keys if not k.is_active],
        "created": created,
        "raw_key": raw_key,
    }
    return render(request, "web/trader/keys.html", context, status=status)


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
@private_page
def keys(request: HttpRequest) -> HttpResponse:
    """GET: the list. POST: mint a key and show its secret on this response only (never
    stored, never redirected to: a reload cannot show it again)."""
    if request.method != "POST":
        return _keys_page(request)
    form = ApiKeyCreateForm(request.POST)
    if not form.is_valid():
        return _keys_page(request, form=form, status=400)
    created, raw = trader_key_create(user=_user(request), name=form.cleaned_data["label"])
    return _keys_page(request, created=created, raw_key=raw)


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
@private_page
def key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    """GET: "Revoke this key?" with a POST form. POST: revoke (idempotent) and go back to
    the list. Another trader's key is a 404."""
    key = TraderApiKey.objects.filter(pk=key_id, user_id=_user(request).pk).first()
    if key is None:
        raise Http404("no such key")
    if request.method != "POST":
        return render(request, "web/trader/key_revoke.html", {"key": key})
    trader_key_revoke(key=key)
    label = f"“{key.name}” " if key.name else ""
    messages.success(
        request, f"Key {label}(tk_{key.prefix}_…) revoked. Bots using it stop within seconds."
    )
    return HttpResponseRedirect(reverse("web:keys"))
