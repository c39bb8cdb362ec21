from django.contrib import admin
from django.urls import include, path

from core import exceptions

urlpatterns = [
    path("admin/", admin.site.urls),
    path("v1/partner/", include("partners.urls")),
    # The trader API, after /v1/partner/, which must win.
    path("v1/", include("marketdata.urls")),
    path("v1/", include("trading.urls")),
    path("", include("accounts.urls")),
    path("", include("web.urls")),
]

handler404 = exceptions.handler404
handler500 = exceptions.handler500
