"""Money and quantity precision. Decimal only, never float.

Cash is held to 6 decimals (Polymarket collateral has 6); share sizes to 2 decimals (as
Polymarket rounds sizes); prices are quantized to the market's tick at the edges. Fees are
floored to 5 decimals by the fee formula itself (docs/engine-rules.md §3).
"""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal, InvalidOperation

CASH_PLACES = 6
CASH_QUANTUM = Decimal("0.000001")
SHARE_PLACES = 2
SHARE_QUANTUM = Decimal("0.01")
# Prices as stored (price columns, averages, VWAPs, distances from the mid): 6 decimals, finer
# than the finest Polymarket tick (0.0001).
PRICE_PLACES = 6
PRICE_QUANTUM = Decimal("0.000001")
FEE_QUANTUM = Decimal("0.00001")
PCT_QUANTUM = Decimal("0.0001")

# Database column shapes shared by every money field.
MONEY_DIGITS = 20
SIZE_DIGITS = 20
PRICE_DIGITS = 10

# Partner input rules for a starting balance (docs/partner-api.md).
STARTING_BALANCE_MAX = Decimal("10000000")
STARTING_BALANCE_PLACES = 2

ZERO = Decimal("0")


def to_decimal(value: object) -> Decimal:
    """Parse a wire value (str/int/Decimal) exactly; floats are refused so no binary
    rounding error can ever enter a balance."""
    if isinstance(value, float):
        raise TypeError("money must never be a float")
    if isinstance(value, Decimal):
        return value
    try:
        result = Decimal(str(value).strip())
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(f"not a decimal: {value!r}") from exc
    if not result.is_finite():
        raise ValueError(f"not a finite decimal: {value!r}")
    return result


def cash(value: Decimal) -> Decimal:
    """Quantize to the cash precision (banker's rounding; only used where the spec does not
    name another rounding)."""
    return value.quantize(CASH_QUANTUM, rounding=ROUND_HALF_EVEN)


def floor_fee(value: Decimal) -> Decimal:
    return value.quantize(FEE_QUANTUM, rounding=ROUND_DOWN)


def pct(numerator: Decimal, denominator: Decimal) -> Decimal:
    """numerator / denominator as a percentage with 4 decimals; 0 when the base is 0."""
    if not denominator:
        return ZERO.quantize(PCT_QUANTUM)
    return (numerator * 100 / denominator).quantize(PCT_QUANTUM, rounding=ROUND_HALF_EVEN)


def wire(value: Decimal | None, *, min_places: int = 2) -> str | None:
    """A decimal as the API's string: exact, no exponent, trailing zeros trimmed down to
    `min_places` decimals ("10000.00", "0.52", "12.345678")."""
    if value is None:
        return None
    text = format(value, "f")
    if "." in text:
        whole, frac = text.split(".")
        frac = frac.rstrip("0")
    else:
        whole, frac = text, ""
    frac = frac.ljust(min_places, "0")
    if whole in ("-0", "-"):
        whole = "0" if not frac.strip("0") else "-0"
    return f"{whole}.{frac}" if frac else whole
