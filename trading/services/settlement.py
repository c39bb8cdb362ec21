"""Settlement at resolution (docs/engine-rules.md §5, §7): pay `size × final price` for every open
position in a resolved or void market, as a SETTLEMENT ledger entry plus a Fill row of
kind="settlement" (the trades feed item), and mark the MarketResolution consumed.

Decisions:
  - Only `resolved` and `void` resolutions settle; `ambiguous` does nothing (and is not
    marked consumed: an operator's manual verdict rewrites it and the sweep picks it up).
  - Only positions with status `open` settle (closed_by_reset ones are history). Positions of
    CLOSED accounts are sealed: skipped, never changed.
  - Per account, one transaction under the account row lock (retried on conflict): cancel the
    account's live orders in the market (reason MARKET_RESOLVED, reservations released), then
    per open position with size > 0: a SETTLEMENT ledger entry (written even when the payout
    is 0, so every settled position has its cash record), a settlement Fill (side SELL,
    price = final price, size = position size, fee 0, liquidity null, price_source
    "resolution", realized_pnl = payout − cost_basis, next account seq, trigger_key
    `settle:{resolution}:{position}` UNIQUE), and the position becomes `settled` with size 0:
    the settlement removes the shares, so size = Σ buys − Σ sells − Σ settlements. An open
    position of size 0 (fully sold) just becomes `settled`, with no fill and no cash entry.
  - A settlement is not a trading day (trading_days counts days with fills of orders).
  - Equity snapshot after the settlement, in the same transaction.
  - Idempotent: the re-check of `open` under the lock plus the unique trigger_key make a
    second or concurrent run change nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.models import Position
from core.db import retry_on_conflict
from core.money import ZERO
from marketdata.bus import BookTop, get_bus, latest_many_live
from marketdata.models import MarketResolution
from marketdata.services import market_resolution_mark_consumed
from trading import engine, states, store
from trading.engine import Effects, PositionState
from trading.models import Order
from trading.orderevents import order_events_publish_on_commit
from trading.services.cancel import MARKET_HALTED_REASON

logger = logging.getLogger(__name__)

SETTLEABLE = frozenset({MarketResolution.State.RESOLVED, MarketResolution.State.VOID})


@dataclass(frozen=True)
class SettlementResult:
    resolution_id: int
    settleable: bool = False
    accounts: int = 0
    accounts_closed_skipped: int = 0
    positions: int = 0
    orders_cancelled: int = 0
    paid: Decimal = ZERO
    consumed: bool = False


@dataclass(frozen=True)
class _AccountResult:
    positions: int = 0
    orders_cancelled: int = 0
    paid: Decimal = ZERO
    closed: bool = False


@retry_on_conflict()
@transaction.atomic
def _settle_account(
    *, account_id: Any, resolution: MarketResolution, payouts: dict[str, Decimal]
) -> _AccountResult:
    locked = store.lock(
        account_id,
        orders="market",
        orders_arg=resolution.market.condition_id,
        tokens=sorted(payouts),
    )
    account = locked.account
    if account is None:
        return _AccountResult()
    if account.status == engine.CLOSED:
        return _AccountResult(closed=True)
    fx = Effects(account, timezone.now())
    cancelled = locked.orders or []
    for order in cancelled:
        engine.release(
            fx,
            order,
            locked.position(order.token_id),
            status=states.CANCELED,
            reason=MARKET_HALTED_REASON,
        )
    paid = ZERO
    settled = 0
    for position in list((locked.positions or {}).values()):
        if position.token_id not in payouts or position.status != engine.OPEN:
            continue
        row = engine.settle(
            fx,
            position,
            payouts[position.token_id],
            trigger_key=f"settle:{resolution.pk}:{position.id}",
        )
        if row is not None:
            paid += row.notional
            settled += 1
    if fx.fills or cancelled:
        held = list((locked.positions or {}).values())
        engine.snapshot(fx, engine.holdings_value(held, latest_many(held)))
    if fx.orders or fx.positions:
        store.write(fx)
    if cancelled:
        order_events_publish_on_commit(cancelled)
    return _AccountResult(positions=settled, orders_cancelled=len(cancelled), paid=paid)


def latest_many(held: list[PositionState]) -> dict[str, BookTop]:
    """The live tops of the positions that count in equity (one bus read; none without)."""
    tokens = [p.token_id for p in held if p.valued]
    return latest_many_live(get_bus(), tokens) if tokens else {}


def resolution_has_holdings(*, resolution_id: int) -> bool:
    """True if anything in the resolution's market is there to settle or cancel: an open
    position or a live order. The signal path enqueues only then; a resolution nobody holds
    is marked consumed by the `settle-pending` sweep instead."""
    res = MarketResolution.objects.select_related("market").filter(pk=resolution_id).first()
    if res is None:
        return False
    tokens = list(res.market.tokens.values_list("token_id", flat=True))
    return (
        Position.objects.filter(token_id__in=tokens, status=Position.Status.OPEN).exists()
        or Order.objects.filter(
            market_id=res.market.condition_id, status=Order.Status.LIVE
        ).exists()
    )


def market_settle(*, resolution_id: int) -> SettlementResult:
    """Settle every open position of the resolution's market (see the module docstring), one
    transaction per account in primary-key order, then mark the resolution consumed. Safe to
    call twice or concurrently: nothing is paid twice. Ambiguous resolutions do nothing."""
    resolution = MarketResolution.objects.select_related("market").filter(pk=resolution_id).first()
    if resolution is None:
        logger.warning("settlement: resolution %s does not exist", resolution_id)
        return SettlementResult(resolution_id=resolution_id)
    if resolution.state not in SETTLEABLE:
        logger.info("settlement: resolution %s is %s; not settled", resolution.pk, resolution.state)
        return SettlementResult(resolution_id=resolution.pk)
    payouts = resolution.payouts_decimal
    tokens = set(resolution.market.tokens.values_list("token_id", flat=True))
    if not payouts or set(payouts) != tokens or any(not ZERO <= p <= 1 for p in payouts.values()):
        logger.error(
            "settlement: resolution %s has payouts %s for tokens %s; not settled",
            resolution.pk,
            resolution.payouts,
            sorted(tokens),
        )
        return SettlementResult(resolution_id=resolution.pk)
    market_id = resolution.market.condition_id
    account_ids = sorted(
        set(
            Position.objects.filter(
                token_id__in=list(payouts), status=Position.Status.OPEN
            ).values_list("account_id", flat=True)
        )
        | set(
            Order.objects.filter(market_id=market_id, status=Order.Status.LIVE).values_list(
                "account_id", flat=True
            )
        )
    )
    accounts = closed = n_positions = n_orders = 0
    paid = ZERO
    for account_id in account_ids:
        result = _settle_account(account_id=account_id, resolution=resolution, payouts=payouts)
        if result.closed:
            closed += 1
            continue
        if result.positions or result.orders_cancelled:
            accounts += 1
        n_positions += result.positions
        n_orders += result.orders_cancelled
        paid += result.paid
    consumed = market_resolution_mark_consumed(resolution_id=resolution.pk)
    if n_positions or n_orders:
        logger.info(
            "settled market %s (%s): %d positions in %d accounts, %s paid, %d orders cancelled",
            market_id,
            resolution.state,
            n_positions,
            accounts,
            paid,
            n_orders,
        )
    return SettlementResult(
        resolution_id=resolution.pk,
        settleable=True,
        accounts=accounts,
        accounts_closed_skipped=closed,
        positions=n_positions,
        orders_cancelled=n_orders,
        paid=paid,
        consumed=consumed,
    )


def markets_settle_pending() -> int:
    """Settle every resolved/void resolution not yet consumed (oldest first). Returns how many
    positions were settled. The beat sweep behind the signal path: safe to run any time."""
    pending = list(
        MarketResolution.objects.filter(consumed_at__isnull=True, state__in=sorted(SETTLEABLE))
        .order_by("detected_at", "pk")
        .values_list("pk", flat=True)
    )
    return sum(market_settle(resolution_id=pk).positions for pk in pending)
