from django.urls import path

from web.markets import views

urlpatterns = [
    path("markets/", views.market_list, name="markets"),
    path("markets/<str:condition_id>/", views.market_detail, name="market"),
    path("markets/<str:condition_id>/book", views.market_book, name="market-book"),
    path("markets/<str:condition_id>/history", views.market_history, name="market-history"),
    path("markets/<str:condition_id>/preview", views.ticket_preview, name="market-preview"),
    path("markets/<str:condition_id>/order", views.order_submit, name="market-order"),
    path("markets/<str:condition_id>/mine", views.market_mine, name="market-mine"),
]
