"""Market reads shared by the trader API (marketdata.apis) and the trader UI (web.markets)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import F, Q, QuerySet
from django.utils import timezone

from marketdata.bus import BookTop
from marketdata.models import Market, Token


@dataclass(frozen=True)
class TokenTop:
    """An outcome token with its live top of book (None: the feed has no book for it yet);
    the API's quotes and the market page's outcomes build on it."""

    token: Token
    top: BookTop | None

    @property
    def fresh(self) -> bool:
        return self.top is not None and self.top.fresh


MARKET_SORTS = ("volume", "ending_soon")
MARKET_STATUSES = (*(s.value for s in Market.Status), "all")


def market_search(
    *, q: str, category: str, status: str, sort: str
) -> tuple[QuerySet[Market], tuple[str, ...]]:
    """The filtered market queryset and its keyset fields (ascending, last one unique)."""
    qs = Market.objects.select_related("event").prefetch_related("tokens")
    if q:
        qs = qs.filter(Q(question__icontains=q) | Q(slug__icontains=q))
    if category:
        qs = qs.filter(category__iexact=category)
    if status != "all":
        qs = qs.filter(status=status)
    if sort == "ending_soon":
        qs = qs.filter(end_date__isnull=False, end_date__gt=timezone.now())
        return qs, ("end_date", "id")
    # Biggest first through an ascending keyset on −volume (keyset_page only walks upwards).
    return qs.annotate(neg_volume=-F("volume")), ("neg_volume", "id")
