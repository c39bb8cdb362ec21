"""The URLconf the OpenAPI generator walks: the partner surface only, at its real prefix."""

from django.urls import include, path

urlpatterns = [path("v1/partner/", include("partners.urls"))]
