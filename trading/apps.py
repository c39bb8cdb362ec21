import logging
from typing import Any

from django.apps import AppConfig
from django.db import transaction

logger = logging.getLogger(__name__)


def _enqueue_settlement(sender: Any, *, resolution_id: int, **kwargs: Any) -> None:
    """`marketdata.services.resolution_recorded` (sent after the resolution committed): settle
    that market on commit of whatever transaction is open now (immediately if none), when
    anything in it holds positions or live orders — a market nobody holds is left to the
    `settle-pending` sweep, which marks it consumed within 30 s. A failure to enqueue or, in
    eager mode, to settle is logged, never raised into marketdata: the sweep retries every
    unconsumed resolution."""

    def enqueue() -> None:
        from trading.services.settlement import resolution_has_holdings
        from trading.tasks import settle_market

        try:
            if resolution_has_holdings(resolution_id=resolution_id):
                settle_market.delay(resolution_id)
        except Exception:
            logger.exception("settlement of resolution %s not enqueued/failed", resolution_id)

    transaction.on_commit(enqueue)


class TradingConfig(AppConfig):
    name = "trading"
    verbose_name = "Trading"

    def ready(self) -> None:
        from marketdata.services import resolution_recorded

        resolution_recorded.connect(
            _enqueue_settlement, dispatch_uid="trading.settle_on_resolution"
        )
