from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Traders and accounts"

    def ready(self) -> None:
        # Register the tasks in every process, not only in workers (where Celery's
        # autodiscovery imports them): services enqueue them by name (accounts.services.login).
        from accounts import tasks  # noqa: F401
