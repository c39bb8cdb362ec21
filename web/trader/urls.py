from django.urls import path

from web.trader import views

urlpatterns = [
    path("portfolio/", views.portfolio, name="portfolio"),
    path("leaderboard/", views.leaderboard, name="leaderboard"),
    path("keys/", views.keys, name="keys"),
]
