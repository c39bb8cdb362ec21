"""Trader web UI routes. Each area keeps its own route list so the modules stay independent."""

from django.urls import path

from web import views
from web.markets.urls import urlpatterns as market_urls
from web.trader.urls import urlpatterns as trader_urls

app_name = "web"

urlpatterns = [
    path("", views.home, name="home"),
    *market_urls,
    *trader_urls,
]
