"""/v1/partner/* routes. Ids are matched loosely ([^/]+) so a malformed id reaches the view
and gets the same NOT_FOUND as a missing or foreign one; a trailing slash is tolerated."""

from django.urls import re_path
from drf_spectacular.views import SpectacularJSONAPIView, SpectacularRedocView

from partners import apis

ID = r"(?P<{name}>[^/]+)"

urlpatterns = [
    re_path(r"^users/?$", apis.UserListCreateApi.as_view(), name="partner-users"),
    re_path(
        rf"^users/{ID.format(name='user_id')}/?$", apis.UserDetailApi.as_view(), name="partner-user"
    ),
    re_path(
        rf"^users/{ID.format(name='user_id')}/login-link/?$",
        apis.UserLoginLinkApi.as_view(),
        name="partner-user-login-link",
    ),
    re_path(r"^accounts/?$", apis.AccountListCreateApi.as_view(), name="partner-accounts"),
    re_path(
        rf"^accounts/{ID.format(name='account_id')}/?$",
        apis.AccountDetailApi.as_view(),
        name="partner-account",
    ),
    re_path(
        rf"^accounts/{ID.format(name='account_id')}/trades/?$",
        apis.AccountTradesApi.as_view(),
        name="partner-account-trades",
    ),
    re_path(
        rf"^accounts/{ID.format(name='account_id')}/equity/?$",
        apis.AccountEquityApi.as_view(),
        name="partner-account-equity",
    ),
    re_path(
        rf"^accounts/{ID.format(name='account_id')}/close/?$",
        apis.AccountCloseApi.as_view(),
        name="partner-account-close",
    ),
    re_path(
        rf"^accounts/{ID.format(name='account_id')}/reset/?$",
        apis.AccountResetApi.as_view(),
        name="partner-account-reset",
    ),
    re_path(r"^whoami/?$", apis.WhoamiApi.as_view(), name="partner-whoami"),
    re_path(
        r"^openapi\.json$",
        SpectacularJSONAPIView.as_view(urlconf="partners.urls_schema"),
        name="partner-openapi",
    ),
    re_path(
        r"^docs/?$", SpectacularRedocView.as_view(url_name="partner-openapi"), name="partner-docs"
    ),
]
