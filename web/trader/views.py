"""Portfolio, leaderboard and API keys pages."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_safe


@require_safe
@login_required
def portfolio(request: HttpRequest) -> HttpResponse:
    return redirect("accounts:app-home")


@require_safe
def leaderboard(request: HttpRequest) -> HttpResponse:
    return render(request, "web/trader/leaderboard.html")


@require_safe
@login_required
def keys(request: HttpRequest) -> HttpResponse:
    return render(request, "web/trader/keys.html")
