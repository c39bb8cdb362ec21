"""Trading services: order placement with taker fills at entry (orders), cancels and expiry
(cancel), account close/reset (lifecycle), settlement at resolution (settlement). Import from
here; the submodules are layout."""

from trading.services.cancel import (
    order_cancel,
    order_cancel_account,
    order_cancel_all,
    order_cancel_market,
    orders_cancel_halted,
    orders_expire,
)
from trading.services.lifecycle import account_close, account_reset
from trading.services.orders import PlacedOrder, order_place, order_request
from trading.services.settlement import SettlementResult, market_settle, markets_settle_pending
from trading.services.snapshots import account_equity_measure, equity_snapshots_take

__all__ = [
    "PlacedOrder",
    "SettlementResult",
    "account_close",
    "account_equity_measure",
    "account_reset",
    "equity_snapshots_take",
    "market_settle",
    "markets_settle_pending",
    "order_cancel",
    "order_cancel_account",
    "order_cancel_all",
    "order_cancel_market",
    "order_place",
    "order_request",
    "orders_cancel_halted",
    "orders_expire",
]
