"""URLconf for benchmark runs: everything in config.urls plus `bench/bare/<uuid>`, a bare
Django view doing exactly one indexed read. It is the baseline the partner API is measured
against; it is not in config.urls and never served in production."""

from __future__ import annotations

import uuid

from django.http import HttpRequest, JsonResponse
from django.urls import path

from accounts.models import Account
from config.urls import handler404, handler500
from config.urls import urlpatterns as base_urlpatterns


def bare_account_cash(request: HttpRequest, account_id: uuid.UUID) -> JsonResponse:
    """One primary-key read, no authentication, no rate limit, no serializer."""
    row = Account.objects.filter(pk=account_id).values("cash").first()
    if row is None:
        return JsonResponse({"error": "NOT_FOUND"}, status=404)
    return JsonResponse({"cash": str(row["cash"])})


urlpatterns = [
    path("bench/bare/<uuid:account_id>", bare_account_cash, name="bench-bare"),
    *base_urlpatterns,
]

__all__ = ["handler404", "handler500", "urlpatterns"]
