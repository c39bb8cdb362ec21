"""The two rules every change of an account's balances obeys, pure (no I/O): a cash movement
never takes available cash (cash − reserved) below zero, and each equity measurement folds
into the epoch's high-water mark and maximum drawdown. The wallet services (accounts.services)
and the engine core (trading.engine) both apply them from here."""

from __future__ import annotations

from decimal import Decimal

from core import errors
from core.money import cash, pct


def cash_movement(balance: Decimal, reserved: Decimal, amount: Decimal) -> tuple[Decimal, Decimal]:
    """The movement at cash precision and the balance after it; VALIDATION_FAILED if it
    would leave less cash than is reserved."""
    amount = cash(amount)
    after = balance + amount
    if after < reserved:
        raise errors.ValidationFailed(
            "cash movement would leave negative available cash",
            details={"amount": [str(amount)], "available": [str(balance - reserved)]},
        )
    return amount, after


def equity_extremes(
    high_water_mark: Decimal, max_drawdown: Decimal, max_drawdown_pct: Decimal, equity: Decimal
) -> tuple[Decimal, Decimal, Decimal]:
    """The epoch's high-water mark and maximum drawdown (absolute, and % of the mark it fell
    from) after measuring `equity`."""
    hwm = max(high_water_mark, equity)
    drawdown = hwm - equity
    if drawdown > max_drawdown:
        return hwm, drawdown, pct(drawdown, hwm)
    return hwm, max_drawdown, max_drawdown_pct
