"""Market list and market page: the live book, the price chart, the order ticket.

Live book: the page polls a small fragment (`market_book`) every BOOK_POLL_MS. Polling, not
server-sent events, because the web tier is gunicorn's sync workers (deploy/gunicorn.conf.py):
an open SSE stream would pin one worker per open market page. The fragment costs two indexed
queries and one price-bus round trip, and answers 204 (htmx leaves the DOM alone) while the
book's digest equals the one the page already shows; bench/web_ui.py measures feed → visible
change in a real browser (docs/benchmarks.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from decimal import Decimal
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST, require_safe

from accounts.models import Account, Position, User
from core import errors
from core.api.ratelimit import rate_limit_check
from core.money import ZERO
from marketdata import states as market_states
from marketdata.apis import (
    PRICE_HISTORY_INTERVALS,
    UPSTREAM_RETRIES,
    UPSTREAM_TIMEOUT_S,
)
from marketdata.bus import BookTop, get_bus, latest_many_live
from marketdata.clients import ClobClient, PolymarketError
from marketdata.models import Market, Token
from marketdata.watchlist import watch
from trading.models import Order
from trading.permissions import account_for_trader, ensure_account_tradable
from trading.services import order_place
from web.markets import selectors
from web.markets.selectors import Outcome
from web.markets.ticket import (
    TicketErrors,
    TicketForm,
    default_expiry,
    error_sentences,
    new_client_order_id,
    order_preview,
)
from web.templatetags import market_tags

BOOK_POLL_MS = 400
BOOK_DEPTH = 8  # levels shown per side
LIST_REFRESH_S = 5
HISTORY_CACHE_SECONDS = 30
HISTORY_FAILURE_CACHE_SECONDS = 10
HISTORY_UNAVAILABLE = {"error": "SERVICE_UNAVAILABLE", "message": "Price history is unavailable."}
HISTORY_INTERVALS = ("1h", "6h", "1d", "1w", "1m", "max")
HISTORY_FIDELITY = {"1h": 1, "6h": 5, "1d": 15, "1w": 60, "1m": 240, "max": 1440}


def server_timing(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """`Server-Timing: view;dur=<ms>`: the view's own time, for the browser benchmark."""

    @wraps(view)
    def timed(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        started = time.perf_counter()
        response = view(request, *args, **kwargs)
        response["Server-Timing"] = f"view;dur={(time.perf_counter() - started) * 1000:.2f}"
        return response

    return timed


_watched_at: dict[str, float] = {}
WATCH_REFRESH_S = 60.0  # far inside the watchlist's 15 minutes


def _watch(token_ids: Iterable[str]) -> None:
    """Tell the feed to stream these tokens; each web process says it at most once a minute
    per token (a page view should not cost a Redis write each time)."""
    now = time.monotonic()
    due = [t for t in token_ids if now - _watched_at.get(t, -WATCH_REFRESH_S) >= WATCH_REFRESH_S]
    if due:
        watch(due)
        if len(_watched_at) > 50_000:  # bounded: forget everything, re-announce as needed
            _watched_at.clear()
        for t in due:
            _watched_at[t] = now


def _is_htmx(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"


# --- list ----------------------------------------------------------------------------------------
@require_safe
@server_timing
def market_list(request: HttpRequest) -> HttpResponse:
    params = request.GET
    q = (params.get("q") or "").strip()[:200]
    category = (params.get("category") or "").strip()[:64]
    status = params.get("status") or market_states.OPEN
    if status not in selectors.STATUS_FILTERS:
        status = market_states.OPEN
    sort = params.get("sort") or "volume"
    if sort not in selectors.SORTS:
        sort = "volume"
    cursor = params.get("cursor") or None
    bad_cursor = False
    try:
        rows, page = selectors.market_page(
            q=q, category=category, status=status, sort=sort, cursor=cursor
        )
    except errors.InvalidCursor:
        # A stale or edited link: start the list again rather than fail.
        bad_cursor = True
        rows, page = selectors.market_page(
            q=q, category=category, status=status, sort=sort, cursor=None
        )
    query = {"q": q, "category": category, "status": status, "sort": sort}
    context = {
        "rows": rows,
        "page": page,
        "query": query,
        "cursor": None if bad_cursor else cursor,
        "categories": selectors.categories(),
        "sorts": selectors.SORTS,
        "statuses": selectors.STATUS_FILTERS,
        "refresh_s": LIST_REFRESH_S,
    }
    template = "web/markets/_results.html" if _is_htmx(request) else "web/markets/list.html"
    return render(request, template, context)


# --- market page ---------------------------------------------------------------------------------
def _market_or_404(condition_id: str) -> Market:
    market = selectors.market_for_page(condition_id)
    if market is None:
        raise Http404("no such market")
    return market


@require_safe
@server_timing
def market_detail(request: HttpRequest, condition_id: str) -> HttpResponse:
    market = _market_or_404(condition_id)
    outcomes = selectors.outcomes_of(market)
    if market.is_tradable:
        _watch(o.token.token_id for o in outcomes)  # an opened book becomes live
    context: dict[str, Any] = {
        "market": market,
        "outcomes": outcomes,
        "book": _book_context(market, outcomes),
        "history_intervals": HISTORY_INTERVALS,
    }
    if request.user.is_authenticated:
        user = request.user
        form = TicketForm(
            token=outcomes[0].token.token_id if outcomes else "",
            client_order_id=new_client_order_id(),
        )
        accounts = selectors.trader_accounts(user)  # type: ignore[arg-type]
        if accounts:
            form.account = str(accounts[0].pk)
        context["ticket"] = _ticket_context(market, outcomes, form, accounts)
        context["mine"] = _mine_context(user, market)
    return render(request, "web/markets/detail.html", context)


def _book_side(rows: list[list[str]], *, asks: bool) -> list[dict[str, Any]]:
    """Top levels with running totals and depth-bar widths (best level first)."""
    rows = rows[:BOOK_DEPTH]
    out: list[dict[str, Any]] = []
    running = ZERO
    for price, size in rows:
        shares = Decimal(size)
        running += shares
        out.append(
            {
                "price": price,
                "cents": selectors.cents(price),
                # Formatted here, not with template filters: the fragment is polled.
                "size_text": market_tags.shares(shares),
                "total_text": market_tags.usd(Decimal(price) * shares),
                "cum": running,
            }
        )
    peak = running or Decimal(1)
    for level in out:
        level["width"] = int(level["cum"] * 100 / peak)
    return list(reversed(out)) if asks else out


def _book_context(market: Market, outcomes: list[Outcome]) -> dict[str, Any]:
    books = []
    for o in outcomes:
        top = o.top
        books.append(
            {
                "outcome": o,
                "top": top,
                "asks": _book_side(top.asks, asks=True) if top else [],
                "bids": _book_side(top.bids, asks=False) if top else [],
                "spread_c": selectors.cents(top.spread) if top and top.spread else None,
                "mid_c": selectors.cents(top.mid) if top and top.mid else None,
                "last_c": selectors.cents(top.last_trade_price)
                if top and top.last_trade_price
                else None,
            }
        )
    prints = selectors.recent_prints(outcomes)
    return {
        "books": books,
        "prints": prints,
        "version": selectors.book_version(outcomes, prints),
        "poll_ms": BOOK_POLL_MS,
        "condition_id": market.condition_id,
    }


@require_safe
@server_timing
def market_book(request: HttpRequest, condition_id: str) -> HttpResponse:
    """The live book fragment; 204 while it is unchanged from the version the page shows."""
    found = selectors.market_tokens(condition_id)
    if found is None:
        raise Http404("no such market")
    market, tokens = found
    tops = latest_many_live(get_bus(), [t.token_id for t in tokens]) if tokens else {}
    outcomes = [Outcome(t, tops.get(t.token_id)) for t in tokens]
    book = _book_context(market, outcomes)
    if request.GET.get("v") == book["version"]:
        response = HttpResponse(status=204)
    else:
        # The headline prices ride along out of band (htmx hx-swap-oob).
        # The ticket's quotes too, for a signed-in trader on a market that takes orders (the
        # only case where the page has a ticket).
        quotes = (
            request.user.is_authenticated
            and market.is_tradable
            and market.accepting_orders
            and not market.closed
        )
        response = render(
            request,
            "web/markets/_book.html",
            {"book": {**book, "oob": True, "ticket_quotes": quotes}},
        )
    response["Cache-Control"] = "no-store"
    return response


@require_safe
def market_history(request: HttpRequest, condition_id: str) -> HttpResponse:
    """Price history of one outcome for the chart (proxied from the CLOB like
    /v1/prices-history, cached briefly so many viewers cost one upstream call)."""
    found = selectors.market_tokens(condition_id)
    if found is None:
        raise Http404("no such market")
    _, tokens = found
    by_id = {t.token_id: t for t in tokens}
    token = by_id.get(request.GET.get("token") or "") or (tokens[0] if tokens else None)
    if token is None:
        raise Http404("no outcomes")
    interval = request.GET.get("interval") or "1d"
    if interval not in HISTORY_INTERVALS or interval not in PRICE_HISTORY_INTERVALS:
        interval = "1d"
    key = f"web:history:{token.token_id}:{interval}"
    body = cache.get(key)
    if body is None:
        try:
            with ClobClient(timeout=UPSTREAM_TIMEOUT_S, retries=UPSTREAM_RETRIES) as clob:
                points = clob.prices_history(
                    token.token_id, interval=interval, fidelity=HISTORY_FIDELITY[interval]
                )
        except PolymarketError:
            # Remembered briefly too: an unreachable upstream must not hold a sync worker for
            # the client timeout on every page view.
            cache.set(key, HISTORY_UNAVAILABLE, HISTORY_FAILURE_CACHE_SECONDS)
            body = HISTORY_UNAVAILABLE
        else:
            body = {
                "token_id": token.token_id,
                "outcome": token.outcome,
                "interval": interval,
                "t": [t for t, _ in points],
                "p": [float(p) for _, p in points],  # chart coordinates only, never money
            }
            cache.set(key, body, HISTORY_CACHE_SECONDS)
    if body.get("error"):
        return JsonResponse(body, status=503)
    return JsonResponse(body)


# --- the ticket --------------------------------------------------------------------------------
def _account_label(account: Account) -> str:
    tenant = account.tenant
    name = "Personal" if tenant is None else f"Managed by {tenant.name}"
    if account.stage:
        name += f" · {account.get_stage_display()}"
    if account.external_id and tenant is not None:
        name += f" · {account.external_id}"
    if tenant is not None and not tenant.enabled:
        return f"{name} — trading paused by the firm"
    return f"{name} — ${account.available_cash:,.2f} available"


def _ticket_context(
    market: Market,
    outcomes: list[Outcome],
    form: TicketForm,
    accounts: list[Account],
    *,
    errors_: TicketErrors | None = None,
    result: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "market": market,
        "outcomes": outcomes,
        "form": form,
        "accounts": [(str(a.pk), _account_label(a)) for a in accounts],
        "errors": (errors_ or TicketErrors()).by_field,
        "result": result,
        "expires_default": form.expires_at or default_expiry(),
        "tradable": market.is_tradable and market.accepting_orders and not market.closed,
    }


def _mine_context(user: Any, market: Market) -> dict[str, Any]:
    names = {t.token_id: t.outcome for t in market.tokens.all()}
    orders = selectors.open_orders_in_market(user, market.condition_id)
    for order in orders:
        order.outcome_name = names.get(order.token_id, "")  # type: ignore[attr-defined]
    return {
        "positions": list(selectors.positions_in_market(user, market.condition_id)),
        "fills": selectors.fills_in_market(user, market.condition_id),
        "orders": orders,
    }


def _owned_account(user: Any, account_id: str) -> Account | None:
    try:
        return account_for_trader(user=user, account_id=account_id)
    except errors.NotFound:
        return None


def _position(account: Account | None, token_id: str) -> Position | None:
    if account is None:
        return None
    return Position.objects.filter(account=account, token_id=token_id, epoch=account.epoch).first()


@require_safe
@server_timing
def ticket_preview(request: HttpRequest, condition_id: str) -> HttpResponse:
    """The ticket's live preview (GET, no side effects)."""
    market = _market_or_404(condition_id)
    tokens = {t.token_id: t for t in market.tokens.all()}
    form = TicketForm.from_data(request.GET)
    token = tokens.get(form.token)
    top: BookTop | None = None
    live = False
    if token is not None:
        top, live = get_bus().latest_live(token.token_id)
    account = None
    if request.user.is_authenticated and form.account:
        account = _owned_account(request.user, form.account)
    preview = order_preview(
        form=form,
        market=market,
        token=token,
        top=top,
        live=live,
        account=account,
        position=_position(account, form.token) if form.side == "SELL" else None,
    )
    response = render(
        request,
        "web/markets/_preview.html",
        {"preview": preview, "form": form, "token": token, "market": market},
    )
    response["Cache-Control"] = "no-store"
    return response


def _result(placed_order: Order, fills: list[Any], created: bool) -> dict[str, Any]:
    filled = placed_order.filled_size
    avg = placed_order.filled_notional / filled if filled else None
    return {
        "order": placed_order,
        "fills": fills,
        "replayed": not created,
        "filled": filled,
        "avg_c": selectors.cents(avg.quantize(Decimal("0.0001"))) if avg is not None else None,
        "price_c": selectors.cents(placed_order.price),
    }


@require_POST
@login_required
@server_timing
def order_submit(request: HttpRequest, condition_id: str) -> HttpResponse:
    """Place the ticket's order through the engine (the same path as POST /v1/orders): the
    ticket comes back with the result or each error next to its field, and a new
    client_order_id (a resend of THIS ticket replays; the next order is new)."""
    market = _market_or_404(condition_id)
    user = request.user
    assert isinstance(user, User)  # login_required
    form = TicketForm.from_data(request.POST)
    outcomes = selectors.outcomes_of(market)
    tokens = {o.token.token_id: o.token for o in outcomes}
    accounts = selectors.trader_accounts(user)
    result = None
    problems = TicketErrors()
    token: Token | None = tokens.get(form.token)
    try:
        limit = rate_limit_check(
            tenant_id=-int(user.pk),
            key_prefix="session",
            per_second=int(settings.RATE_LIMIT_DEFAULT_PER_SECOND),
            per_minute=int(settings.RATE_LIMIT_DEFAULT_PER_MINUTE),
        )
        if not limit.allowed:
            raise errors.RateLimitExceeded()
        account = account_for_trader(user=user, account_id=form.account)
        ensure_account_tradable(account)
        if token is None:
            raise errors.ValidationFailed(details={"token_id": ["unknown token"]})
        placed = order_place(account_id=account.pk, **form.engine_args())
        result = _result(placed.order, placed.fills, placed.created)
        accounts = selectors.trader_accounts(user)  # the new balances
    except errors.DomainError as exc:
        top = get_bus().latest(token.token_id) if token is not None else None
        problems = error_sentences(exc, market=market, top=top)
    form.client_order_id = new_client_order_id()
    context = _ticket_context(market, outcomes, form, accounts, errors_=problems, result=result)
    status = 200
    if problems:
        status = 422  # htmx swaps it anyway (see markets.js); plain form posts show it too
    if _is_htmx(request):
        response = render(request, "web/markets/_ticket.html", {"ticket": context}, status=status)
        response["HX-Trigger"] = "ticket-done"
        return response
    full = {
        "market": market,
        "outcomes": outcomes,
        "book": _book_context(market, outcomes),
        "history_intervals": HISTORY_INTERVALS,
        "ticket": context,
        "mine": _mine_context(user, market),
    }
    return render(request, "web/markets/detail.html", full, status=status)


@require_safe
@login_required
def market_mine(request: HttpRequest, condition_id: str) -> HttpResponse:
    """The signed-in trader's positions, open orders and fills in this market (refreshed
    after each order)."""
    market = _market_or_404(condition_id)
    return render(
        request,
        "web/markets/_mine.html",
        {"market": market, "mine": _mine_context(request.user, market)},
    )
