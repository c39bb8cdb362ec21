from django.urls import path

from web.markets import views

urlpatterns = [
    path("markets/", views.market_list, name="markets"),
    path("markets/<str:condition_id>/", views.market_detail, name="market"),
]
