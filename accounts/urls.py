"""Trader-facing pages, mounted at the site root."""

from django.urls import path

from accounts import views

app_name = "accounts"

urlpatterns = [
    path("login/", views.login_page, name="login"),
    path("login/sent/", views.login_sent, name="login-sent"),
    path("login/t/<str:token>", views.login_link_open, name="login-link"),
    path("login/confirm", views.login_confirm, name="login-confirm"),
    path("logout/", views.logout_view, name="logout"),
    path("app/", views.app_home, name="app-home"),
]
