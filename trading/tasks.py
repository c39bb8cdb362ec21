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


@shared_task(name="trading.tasks.orders_cancel_halted")
def orders_cancel_halted(condition_id: str | None = None) -> int:
    """Enqueued when a market halts (the `market_halted` signal, after its commit), and every
    15 s for all markets (CELERY_BEAT_SCHEDULE) as the backstop: cancel the live orders of
    markets that no longer trade. Idempotent; returns how many orders this run cancelled."""
    return services.orders_cancel_halted(
        market_ids=[condition_id] if condition_id is not None else None
    )


@shared_task(name="trading.tasks.settle_market")
def settle_market(resolution_id: int) -> int:
    """Enqueued when marketdata records a resolution (the `resolution_recorded` signal, after
    its commit): settle that market's open positions. Idempotent (unique trigger key per
    settled position); returns how many positions this run settled."""
    return services.market_settle(resolution_id=resolution_id).positions


@shared_task(name="trading.tasks.settle_pending")
def settle_pending() -> int:
    """Every 30 s (CELERY_BEAT_SCHEDULE): settle every resolved/void resolution not yet
    consumed — the backstop if the signal's task was lost. Safe to run twice or
    concurrently: nothing is paid twice. Returns how many positions were settled."""
    return services.markets_settle_pending()


@shared_task(name="trading.tasks.equity_snapshots")
def equity_snapshots() -> int:
    """Every 60 s (CELERY_BEAT_SCHEDULE): snapshot the equity of every active account holding
    positions at current marks (HWM, drawdown and day-start equity between fills). Safe to
    run twice: it only adds measurements. Returns how many accounts were measured."""
    return services.equity_snapshots_take()
