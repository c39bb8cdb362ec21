from django.urls import path

from web.trader import views

urlpatterns = [
    path("portfolio/", views.portfolio, name="portfolio"),
    path("portfolio/history/", views.history_rows, name="portfolio-history"),
    path(
        "portfolio/orders/<uuid:order_id>/cancel/",
        views.order_cancel_view,
        name="order-cancel",
    ),
    path("portfolio/orders/cancel-all/", views.orders_cancel_all_view, name="orders-cancel-all"),
    path("leaderboard/", views.leaderboard, name="leaderboard"),
    path("keys/", views.keys, name="keys"),
    path("keys/<int:key_id>/revoke/", views.key_revoke, name="key-revoke"),
]
