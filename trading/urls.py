"""/v1/* routes of the native trader API (included after /v1/partner/, which wins): accounts,
trades and orders here, market reads in marketdata.urls, and the OpenAPI document of both. Ids
are matched loosely ([^/]+) so a malformed id reaches the view and gets the same NOT_FOUND as
a missing or foreign one; a trailing slash is tolerated."""

from types import SimpleNamespace

from django.urls import URLPattern, URLResolver, include, path, re_path
from drf_spectacular.views import SpectacularJSONAPIView, SpectacularRedocView

from marketdata.urls import urlpatterns as market_patterns
from trading.apis import accounts, openapi, orders

ID = r"(?P<{name}>[^/]+)"

api_patterns: list[URLPattern | URLResolver] = [
    re_path(r"^accounts/?$", accounts.AccountListApi.as_view(), name="trader-accounts"),
    re_path(
        rf"^accounts/{ID.format(name='account_id')}/?$",
        accounts.AccountDetailApi.as_view(),
        name="trader-account",
    ),
    re_path(r"^trades/?$", accounts.TradeListApi.as_view(), name="trader-trades"),
    re_path(r"^orders/?$", orders.OrderListApi.as_view(), name="trader-orders"),
    re_path(
        rf"^orders/{ID.format(name='order_id')}/?$",
        orders.OrderDetailApi.as_view(),
        name="trader-order",
    ),
]

# What the OpenAPI generator walks: the trader surface only (market reads included), at its
# real prefix (the partner schema walks partners.urls_schema, so neither leaks into the other).
schema_urlconf = SimpleNamespace(
    urlpatterns=[path("v1/", include([*market_patterns, *api_patterns]))]
)

urlpatterns = [
    *api_patterns,
    re_path(
        r"^openapi\.json$",
        SpectacularJSONAPIView.as_view(
            urlconf=schema_urlconf, custom_settings=openapi.SCHEMA_SETTINGS
        ),
        name="trader-openapi",
    ),
    re_path(
        r"^docs/?$", SpectacularRedocView.as_view(url_name="trader-openapi"), name="trader-docs"
    ),
]
