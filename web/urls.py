"""Trader web UI routes. Each area keeps its own route list so the modules stay independent."""

from django.templatetags.static import static
from django.urls import path
from django.views.generic import RedirectView

from web import views
from web.markets.urls import urlpatterns as market_urls
from web.trader.urls import urlpatterns as trader_urls

app_name = "web"

urlpatterns = [
    path("", views.home, name="home"),
    # Browsers and tools that ask for /favicon.ico without reading the page's <link>.
    path("favicon.ico", RedirectView.as_view(url=static("web/favicon.svg"), permanent=True)),
    *market_urls,
    *trader_urls,
]
