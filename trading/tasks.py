"""Celery tasks of the trading app. Each takes ids (or nothing), calls a service and is safe to
run twice."""

from __future__ import annotations

from celery import shared_task

from trading import services


@shared_task(name="trading.tasks.orders_expire")
def orders_expire() -> int:
    """Every 15 s (CELERY_BEAT_SCHEDULE): expire live GTD orders whose expiration has passed,
    releasing their reservations. Idempotent: the service re-checks each order under its
    account's row lock, so a second (or concurrent) run expires nothing twice."""
    return services.orders_expire()
