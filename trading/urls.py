"""/v1/* routes of the native trader API (included after /v1/partner/, which wins). Ids are
matched loosely ([^/]+) so a malformed id reaches the view and gets the same NOT_FOUND as a
missing or foreign one; a trailing slash is tolerated."""

from types import SimpleNamespace

from django.urls import URLPattern, URLResolver, include, path, re_path
from drf_spectacular.views import SpectacularJSONAPIView, SpectacularRedocView

from trading import apis

ID = r"(?P<{name}>[^/]+)"

api_patterns: list[URLPattern | URLResolver] = [
    re_path(r"^markets/?$", apis.MarketListApi.as_view(), name="trader-markets"),
    re_path(
        rf"^markets/{ID.format(name='condition_id')}/?$",
        apis.MarketDetailApi.as_view(),
        name="trader-market",
    ),
    re_path(r"^book/?$", apis.BookApi.as_view(), name="trader-book"),
    re_path(r"^prices-history/?$", apis.PricesHistoryApi.as_view(), name="trader-prices-history"),
    re_path(r"^accounts/?$", apis.AccountListApi.as_view(), name="trader-accounts"),
    re_path(
        rf"^accounts/{ID.format(name='account_id')}/?$",
        apis.AccountDetailApi.as_view(),
        name="trader-account",
    ),
    re_path(r"^trades/?$", apis.TradeListApi.as_view(), name="trader-trades"),
    re_path(r"^orders/?$", apis.OrderListApi.as_view(), name="trader-orders"),
    re_path(
        rf"^orders/{ID.format(name='order_id')}/?$",
        apis.OrderDetailApi.as_view(),
        name="trader-order",
    ),
]

# What the OpenAPI generator walks: the trader surface only, at its real prefix (the partner
# schema walks partners.urls_schema, so neither document leaks into the other).
schema_urlconf = SimpleNamespace(urlpatterns=[path("v1/", include(api_patterns))])

urlpatterns = [
    *api_patterns,
    re_path(
        r"^openapi\.json$",
        SpectacularJSONAPIView.as_view(
            urlconf=schema_urlconf, custom_settings=apis.SCHEMA_SETTINGS
        ),
        name="trader-openapi",
    ),
    re_path(
        r"^docs/?$", SpectacularRedocView.as_view(url_name="trader-openapi"), name="trader-docs"
    ),
]
