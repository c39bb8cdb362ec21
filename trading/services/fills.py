"""Appending fills to an account's feed: the one place that numbers them.

The partner and trader trades feeds page by the per-account `seq`; pollers rely on it being
gap-free, in commit order, and on `filled_at` never going backwards along it. Caller holds
the account row lock (so numbering is serialised per account)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Protocol

from accounts.models import Account, Position
from core.money import ZERO, cash
from marketdata.bus import BookTop, get_bus, latest_many_live
from trading.models import Fill, Side
from trading.selectors import MarkedPosition, PositionRow, position_mark

PRICE_Q = Decimal("0.000001")


class PositionState(Protocol):
    """What `position_apply` reads and changes: a Position, or the plain row a fixed-SQL fill
    path holds (trading.services.matching)."""

    size: Decimal
    avg_price: Decimal
    cost_basis: Decimal
    realized_pnl: Decimal


def position_apply(
    position: PositionState, *, side: str, size: Decimal, notional: Decimal, fee: Decimal
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
    fills_number(account=account, fills=fills, previous_filled_at=previous_filled_at)
    Fill.objects.bulk_create(fills)


def fills_number(
    *, account: Account, fills: Sequence[Fill], previous_filled_at: Any = _LOOK_UP
) -> None:
    """`fills_append` without the INSERT: number and clamp `fills` and advance
    `account.last_fill_seq` in memory, for a caller that inserts them itself in this
    transaction (under the same account row lock)."""
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
    account.last_fill_seq += len(fills)


def open_position_rows(positions: Iterable[Position]) -> list[PositionRow]:
    """The rows `trading.selectors.open_positions` would value (open, with shares), from
    instances the caller holds (and has just changed) under the account row lock."""
    return [
        PositionRow(
            token_id=p.token_id,
            market_id=p.market_id,
            market_question=p.market_question,
            outcome=p.outcome,
            size=p.size,
            avg_price=p.avg_price,
            cost_basis=p.cost_basis,
            last_mark=p.last_mark,
            last_mark_at=p.last_mark_at,
        )
        for p in positions
        if p.status == Position.Status.OPEN and p.size > 0
    ]


def open_positions_value(positions: Iterable[Position]) -> Decimal:
    """The market value of these positions that are open with shares, at their live marks —
    exactly as `trading.selectors.open_positions` values the same rows: ONE bus read."""
    return positions_value(open_position_rows(positions))


def positions_value(
    rows: Sequence[PositionRow], tops: Mapping[str, BookTop] | None = None
) -> Decimal:
    """The market value of these (open, with shares) positions at their live marks, as
    `trading.selectors.open_positions` values them: ONE bus read — none when the caller
    passes the live tops (`latest_many_live`) it read for them."""
    if not rows:
        return ZERO
    if tops is None:
        tops = latest_many_live(get_bus(), [r.token_id for r in rows])
    return sum(
        (MarkedPosition(r, position_mark(r, tops.get(r.token_id))).market_value for r in rows),
        ZERO,
    )
