"""Market discovery on a schedule (Celery beat entry `marketdata-discover`, every 10 minutes),
and of single markets the websocket announces (`new_market`, enqueued by the ingester).

The task is idempotent (discovery upserts on Polymarket's ids), so a duplicate or overlapping
run only costs API calls. Gamma being unreachable fails the task; the next beat retries.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from marketdata.clients import ClobClient, GammaClient
from marketdata.services import discover, discover_by_condition_ids, markets_check_held

# Markets per scheduled run (open markets come first; Gamma's keyset pages hold 100).
DISCOVERY_LIMIT = 2000


@shared_task(name="marketdata.tasks.discover_markets")
def discover_markets(
    limit: int | None = DISCOVERY_LIMIT, include_closed: bool = False
) -> dict[str, Any]:
    with GammaClient() as gamma, ClobClient() as clob:
        result = discover(gamma=gamma, clob=clob, limit=limit, include_closed=include_closed)
    return result.as_dict()


@shared_task(name="marketdata.tasks.discover_new_markets")
def discover_new_markets(condition_ids: list[str]) -> dict[str, Any]:
    """Markets the websocket announced with `new_market`: upsert them now rather than at the
    next scheduled run, so they can be listed and traded as soon as Gamma has them."""
    with GammaClient() as gamma, ClobClient() as clob:
        result = discover_by_condition_ids(gamma=gamma, clob=clob, condition_ids=condition_ids)
    return result.as_dict()


@shared_task(name="marketdata.tasks.check_held_markets")
def check_held_markets() -> dict[str, Any]:
    """Every 30 s (CELERY_BEAT_SCHEDULE): apply Gamma's and the CLOB's verdicts to every market
    accounts hold, so a resolution is settled within a minute of either showing it."""
    with GammaClient() as gamma, ClobClient() as clob:
        return markets_check_held(gamma=gamma, clob=clob).as_dict()
