from django.apps import AppConfig


class WebConfig(AppConfig):
    """The trader web UI: server-rendered pages over the trading services and selectors."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "web"
