"""/v1/* routes of the trader API's market reads (config.urls includes them beside
trading.urls, after /v1/partner/). A trailing slash is tolerated."""

from django.urls import URLPattern, URLResolver, re_path

from marketdata import apis

ID = r"(?P<{name}>[^/]+)"

urlpatterns: list[URLPattern | URLResolver] = [
    re_path(r"^markets/?$", apis.MarketListApi.as_view(), name="trader-markets"),
    re_path(
        rf"^markets/{ID.format(name='condition_id')}/?$",
        apis.MarketDetailApi.as_view(),
        name="trader-market",
    ),
    re_path(r"^book/?$", apis.BookApi.as_view(), name="trader-book"),
    re_path(r"^prices-history/?$", apis.PricesHistoryApi.as_view(), name="trader-prices-history"),
]
