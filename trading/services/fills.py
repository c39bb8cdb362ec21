"""Appending fills to an account's feed: the one place that numbers them.

The partner and trader trades feeds page by the per-account `seq`; pollers rely on it being
gap-free, in commit order, and on `filled_at` never going backwards along it. Caller holds
the account row lock (so numbering is serialised per account)."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from accounts.models import Account, Position
from core.money import ZERO, cash
from trading.models import Fill, Side

PRICE_Q = Decimal("0.000001")


def position_apply(
    position: Position, *, side: str, size: Decimal, notional: Decimal, fee: Decimal
) -> Decimal:
    """Fold one fill into the position in memory (the caller saves it) and return the P&L
    it realizes: a BUY adds at cost (its fee is a realized cost; avg price excludes fees),
    a SELL releases its share of the cost basis pro rata and realizes the difference less
    its fee. Caller holds the account row lock."""
    if side == Side.BUY:
        position.size += size
        position.cost_basis += notional
        position.avg_price = (position.cost_basis / position.size).quantize(PRICE_Q)
        realized = -fee
    else:
        released = (
            position.cost_basis
            if size == position.size
            else cash(position.cost_basis * size / position.size)
        )
        realized = notional - released - fee
        position.size -= size
        position.cost_basis -= released
        if position.size == 0:
            position.avg_price = ZERO
            position.cost_basis = ZERO
    position.realized_pnl += realized
    return realized


_LOOK_UP: Any = object()


def fills_append(
    *, account: Account, fills: Sequence[Fill], previous_filled_at: Any = _LOOK_UP
) -> None:
    """Number `fills` after the account's last one, clamp their `filled_at` to be no earlier
    than that last fill's (web hosts' clocks can disagree by a little), insert them, and
    advance `account.last_fill_seq` in memory — the caller persists it with its own account
    update, in the same transaction. Caller holds the account row lock. A caller that already
    read the last fill's `filled_at` under that lock passes it (None: no fill yet) and saves
    the query."""
    if not fills:
        return
    previous = None if previous_filled_at is _LOOK_UP else previous_filled_at
    if previous_filled_at is _LOOK_UP and account.last_fill_seq:
        previous = (
            Fill.objects.filter(account=account, seq=account.last_fill_seq)
            .values_list("filled_at", flat=True)
            .first()
        )
    for n, fill in enumerate(fills, start=1):
        fill.seq = account.last_fill_seq + n
        if previous is not None and fill.filled_at < previous:
            fill.filled_at = previous
    Fill.objects.bulk_create(fills)
    account.last_fill_seq += len(fills)
