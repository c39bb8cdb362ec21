"""Reads for the market pages: bounded queries plus ONE price-bus round trip per page.

The list reuses the trader API's search (marketdata.selectors.market_search: the same filters,
sorts and keyset) so the UI and the API can never disagree about which markets a query returns.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from django.core.cache import cache
from django.db.models import QuerySet

from accounts.models import Account, Position, User
from core.clock import from_ms
from core.pagination import Page, keyset_page
from marketdata.bus import BookTop, get_bus, latest_many_live
from marketdata.models import Market, Token
from marketdata.selectors import TokenTop, market_search
from trading.models import Fill, Order

LIST_PAGE_SIZE = 24
CATEGORIES_CACHE_KEY = "web:markets:categories"
CATEGORIES_CACHE_SECONDS = 60
SORTS = {"volume": "Volume", "ending_soon": "Ending soon"}
STATUS_FILTERS = {
    "open": "Open",
    "closed": "Closed (pending)",
    "resolved": "Resolved",
    "all": "All",
}
RECENT_FILLS = 20
RECENT_PRINTS = 15


@dataclass(frozen=True)
class Outcome(TokenTop):
    """One outcome token with its live top, as the market page shows it."""

    @property
    def price_text(self) -> str:
        """The headline price: the mid, else the last trade (in cents)."""
        top = self.top
        if top is None:
            return "–"
        return cents(top.mid or top.last_trade_price)

    @property
    def bid_ask_text(self) -> str:
        top = self.top
        return "" if top is None else f"{cents(top.best_bid)} / {cents(top.best_ask)}"


@dataclass(frozen=True)
class Badge:
    label: str
    css: str
    title: str = ""


def badge(market: Market) -> Badge:
    """The status badge of a market (the list shows it on every card)."""
    status = market.status
    if status == "open":
        if not market.accepting_orders:
            return Badge("Paused", "badge-warn", "Polymarket is not taking orders right now")
        return Badge("Open", "badge-active")
    if status == "closed":
        return Badge("Closed · result pending", "badge-warn", "Trading stopped; no result yet")
    if status == "resolved":
        return Badge("Resolved", "badge-done")
    if status == "void":
        return Badge("Void · 50/50", "badge-done", "Settled 50-50")
    return Badge("Pending review", "badge-warn", "The result is unclear and under review")


@dataclass(frozen=True)
class MarketRow:
    market: Market
    outcomes: list[Outcome]

    @property
    def badge(self) -> Badge:
        return badge(self.market)


def categories() -> list[str]:
    """Distinct non-empty categories (cached: one DISTINCT over the market table a minute)."""
    cached = cache.get(CATEGORIES_CACHE_KEY)
    if cached is None:
        cached = sorted(
            c
            for c in Market.objects.exclude(category="")
            .values_list("category", flat=True)
            .distinct()
            .order_by()
        )
        cache.set(CATEGORIES_CACHE_KEY, cached, CATEGORIES_CACHE_SECONDS)
    return list(cached)


def _tokens(market: Market) -> list[Token]:
    return sorted(market.tokens.all(), key=lambda t: t.index)


def live_tops(markets: list[Market]) -> dict[str, BookTop]:
    """Every token's latest top in ONE bus round trip, `fresh` narrowed to live (a dead
    feed's books never look healthy)."""
    ids = [t.token_id for m in markets for t in m.tokens.all()]
    return latest_many_live(get_bus(), ids) if ids else {}


def market_rows(markets: list[Market]) -> list[MarketRow]:
    tops = live_tops(markets)
    return [MarketRow(m, [Outcome(t, tops.get(t.token_id)) for t in _tokens(m)]) for m in markets]


def market_page(
    *, q: str, category: str, status: str, sort: str, cursor: str | None
) -> tuple[list[MarketRow], Page]:
    """One page of the market list: 3 queries (markets, events joined; tokens) + 1 bus read.
    Raises INVALID_CURSOR for a cursor of another query."""
    qs, fields = market_search(q=q, category=category, status=status, sort=sort)
    key = json.dumps([sort, status, category.lower(), q], separators=(",", ":"))
    scope = "web-markets:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    page = keyset_page(qs, scope=scope, fields=fields, cursor=cursor, limit=LIST_PAGE_SIZE)
    return market_rows(page.items), page


def market_for_page(condition_id: str) -> Market | None:
    return (
        Market.objects.select_related("event", "resolution")
        .prefetch_related("tokens")
        .filter(condition_id=condition_id)
        .first()
    )


def market_tokens(condition_id: str) -> tuple[Market, list[Token]] | None:
    """The market and its tokens for the book fragment (2 small indexed queries)."""
    market = (
        Market.objects.only(
            "id", "condition_id", "status", "tick_size", "accepting_orders", "closed"
        )
        .prefetch_related("tokens")
        .filter(condition_id=condition_id)
        .first()
    )
    if market is None:
        return None
    return market, _tokens(market)


def outcomes_of(market: Market) -> list[Outcome]:
    tokens = _tokens(market)
    tops = latest_many_live(get_bus(), [t.token_id for t in tokens]) if tokens else {}
    return [Outcome(t, tops.get(t.token_id)) for t in tokens]


@dataclass(frozen=True)
class Print:
    """A market-wide trade for the recent-trades table."""

    outcome: str
    price: str
    size: str
    side: str | None
    at: dt.datetime | None


def recent_prints(outcomes: list[Outcome], limit: int = RECENT_PRINTS) -> list[Print]:
    """The market's latest trades across its outcomes, newest first (ONE bus round trip;
    prints without a timestamp sort last)."""
    names = {o.token.token_id: o.token.outcome for o in outcomes}
    rings = get_bus().recent_trades_many(list(names), limit)
    prints = [p for ring in rings.values() for p in ring]
    prints.sort(key=lambda p: p.timestamp_ms or 0, reverse=True)
    return [
        Print(
            outcome=names.get(p.token_id, ""),
            price=p.price,
            size=p.size,
            side=p.side,
            at=from_ms(p.timestamp_ms),
        )
        for p in prints[:limit]
    ]


def book_version(outcomes: list[Outcome], prints: list[Print] | None = None) -> str:
    """A digest of everything the book fragment shows: the poller skips the swap (204) while
    it is unchanged. `published_at` is left out on purpose: a republished identical book
    must not cost a DOM swap."""
    parts: list[Any] = [[(p.outcome, p.price, p.size, p.side, str(p.at)) for p in prints or []]]
    for o in outcomes:
        top = o.top
        if top is None:
            parts.append(None)
            continue
        parts.append(
            [
                top.bids,
                top.asks,
                top.last_trade_price,
                top.last_trade_side,
                top.tick_size,
                top.fresh,
            ]
        )
    return hashlib.blake2b(orjson.dumps(parts), digest_size=8).hexdigest()


# --- the signed-in trader -----------------------------------------------------------------------
def trader_accounts(user: User) -> list[Account]:
    """The trader's open accounts, oldest first (personal and firm-managed)."""
    return list(
        Account.objects.filter(owner=user, status=Account.Status.ACTIVE)
        .select_related("tenant")
        .order_by("created_at", "id")
    )


def positions_in_market(user: User, condition_id: str) -> QuerySet[Position]:
    return (
        Position.objects.filter(
            account__owner=user,
            market_id=condition_id,
            status=Position.Status.OPEN,
            size__gt=0,
        )
        .select_related("account", "account__tenant")
        .order_by("outcome", "account_id")
    )


def fills_in_market(user: User, condition_id: str) -> list[Fill]:
    return list(
        Fill.objects.filter(account__owner=user, market_id=condition_id)
        .select_related("account")
        .order_by("-filled_at", "-id")[:RECENT_FILLS]
    )


def open_orders_in_market(user: User, condition_id: str) -> list[Order]:
    return list(
        Order.objects.filter(
            account__owner=user, market_id=condition_id, status=Order.Status.LIVE
        ).order_by("-created_at")[:50]
    )


def cents(value: Decimal | str | None) -> str:
    """0.4567 → '45.67¢'; a price shown the way Polymarket traders read it."""
    if value is None or value == "":
        return "–"
    c = Decimal(value) * 100
    text = format(c.normalize(), "f")
    return f"{text}¢"
