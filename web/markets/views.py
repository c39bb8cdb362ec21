"""Market list and market page (with the live book and the order ticket)."""

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from marketdata.models import Market


@require_safe
def market_list(request: HttpRequest) -> HttpResponse:
    markets = Market.objects.order_by("-volume")[:50]
    return render(request, "web/markets/list.html", {"markets": markets})


@require_safe
def market_detail(request: HttpRequest, condition_id: str) -> HttpResponse:
    market = Market.objects.filter(condition_id=condition_id).first()
    if market is None:
        raise Http404("no such market")
    return render(request, "web/markets/detail.html", {"market": market})
