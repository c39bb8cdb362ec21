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


def _enqueue_halt_cancels(sender: Any, *, condition_id: str, **kwargs: Any) -> None:
    """`marketdata.services.market_halted` (sent after the halt committed): cancel the
    market's resting orders. Logged, never raised into marketdata: the beat sweep
    (`orders-cancel-halted`) cancels whatever this misses within 15 s."""
    from trading.tasks import orders_cancel_halted

    try:
        orders_cancel_halted.delay(condition_id)
    except Exception:
        logger.exception("cancels for halted market %s not enqueued/failed", condition_id)


class TradingConfig(AppConfig):
    name = "trading"
    verbose_name = "Trading"

    def ready(self) -> None:
        from marketdata.services import market_halted, resolution_recorded

        market_halted.connect(_enqueue_halt_cancels, dispatch_uid="trading.cancel_on_halt")
        resolution_recorded.connect(
            _enqueue_settlement, dispatch_uid="trading.settle_on_resolution"
        )
