"""Celery tasks of the partners app. Each takes ids (or nothing), calls a service and is
safe to run twice."""

from __future__ import annotations

from celery import shared_task

from core.api import idempotency


@shared_task(name="partners.tasks.idempotency_purge")
def idempotency_purge() -> int:
    """Hourly (CELERY_BEAT_SCHEDULE): delete expired Idempotency-Key records. Idempotent."""
    return idempotency.idempotency_purge()
