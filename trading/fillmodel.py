"""The taker fill model as pure functions: fees, reservations and the walk of one token's
book (docs/engine-rules.md §3, docs/fill-model.md). No I/O: the caller reads the book and the
depletion memory, and applies the result.

All quantities are exact Decimals: prices have at most 4 decimals (the finest tick), share
quantities are whole hundredths (SHARE_QUANTUM), so `price × size` is exact at the 6 decimals
of cash; fees are floored to 5 decimals by the formula itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_UP, Decimal, localcontext

from core.money import CASH_QUANTUM, SHARE_QUANTUM, ZERO, floor_fee

ONE = Decimal("1")
HALF = Decimal("0.5")


def floor_shares(value: Decimal) -> Decimal:
    return value.quantize(SHARE_QUANTUM, rounding=ROUND_DOWN)


def _curve(price: Decimal, exponent: Decimal) -> Decimal:
    """(p × (1 − p)) ^ exponent, exact for integral exponents."""
    base = price * (ONE - price)
    if exponent == exponent.to_integral_value():
        return base ** int(exponent)
    with localcontext() as ctx:
        ctx.prec = 28
        return base**exponent


def taker_fee(*, size: Decimal, price: Decimal, rate: Decimal, exponent: Decimal) -> Decimal:
    """fee = size × rate × (p × (1 − p)) ^ exponent, floored to 5 decimals; 0 without a rate."""
    if not rate or not size:
        return ZERO
    return floor_fee(size * rate * _curve(price, exponent))


def buy_reservation(*, price: Decimal, size: Decimal, rate: Decimal, exponent: Decimal) -> Decimal:
    """Cash a BUY of `size` at limit `price` may ever spend: price × size plus the largest
    taker fee any fill at a price ≤ limit could cost (p(1 − p) peaks at 0.5), rounded UP to
    cash precision so a reservation always covers the floored fees actually charged."""
    notional = price * size
    if not rate or not size:
        return notional
    worst = min(price, HALF)
    fee = (size * rate * _curve(worst, exponent)).quantize(CASH_QUANTUM, rounding=ROUND_UP)
    return notional + fee


@dataclass(frozen=True)
class LevelTake:
    """What one order took from one level of the book."""

    price: Decimal
    size: Decimal
    fee: Decimal
    published: Decimal  # the level's size as the feed published it
    available: Decimal  # what was left of it for simulated orders (published − depletion)

    @property
    def notional(self) -> Decimal:
        return self.price * self.size


@dataclass
class Walk:
    takes: list[LevelTake] = field(default_factory=list)
    # True when the order got everything it asked for (size reached, or the amount cannot
    # buy another hundredth of a share at the price it reached — after buying at least one).
    complete: bool = False

    @property
    def filled(self) -> Decimal:
        return sum((t.size for t in self.takes), ZERO)

    @property
    def notional(self) -> Decimal:
        return sum((t.notional for t in self.takes), ZERO)

    @property
    def fees(self) -> Decimal:
        return sum((t.fee for t in self.takes), ZERO)

    @property
    def vwap(self) -> Decimal | None:
        filled = self.filled
        return self.notional / filled if filled else None


def crosses(side: str, level_price: Decimal, limit: Decimal) -> bool:
    """Whether a level of the opposite side is inside the order's limit."""
    return level_price <= limit if side == "BUY" else level_price >= limit


def walk_book(
    *,
    side: str,
    levels: list[tuple[Decimal, Decimal, Decimal]],
    limit: Decimal,
    size: Decimal | None = None,
    amount: Decimal | None = None,
    rate: Decimal = ZERO,
    exponent: Decimal = ONE,
) -> Walk:
    """Walk the opposite side best-first, never past `limit`.

    `levels`: (price, published size, available size) best-first — asks ascending for a BUY,
    bids descending for a SELL; `available` is what depletion left of the level.
    Exactly one of `size` (shares) or `amount` (cash to spend on a BUY, fees included) is set.
    With `amount`, each level takes the most hundredths of a share q ≤ available such that
    q × p + fee(q, p) ≤ what is left of the amount.
    """
    if (size is None) == (amount is None):
        raise ValueError("exactly one of size or amount")
    walk = Walk()
    remaining_size = size
    remaining_amount = amount
    last_price: Decimal | None = None
    for price, published, available in levels:
        if not crosses(side, price, limit):
            break
        last_price = price
        room = floor_shares(available)
        if room <= 0:
            continue
        if remaining_size is not None:
            q = min(room, remaining_size)
        else:
            assert remaining_amount is not None
            q = _shares_for_amount(remaining_amount, price, rate, exponent, cap=room)
            if q <= 0:
                # The rest cannot buy a hundredth here: done — if it bought anything. An
                # amount too small for even one hundredth filled nothing and is not complete
                # (FOK: rejected; FAK: canceled), never `matched` with no fills.
                walk.complete = bool(walk.takes)
                return walk
        fee = taker_fee(size=q, price=price, rate=rate, exponent=exponent)
        walk.takes.append(LevelTake(price, q, fee, published, available))
        if remaining_size is not None:
            remaining_size -= q
            if remaining_size <= 0:
                walk.complete = True
                return walk
        else:
            assert remaining_amount is not None
            remaining_amount -= q * price + fee
            if q < room:  # the amount, not the level, limited this take
                walk.complete = True
                return walk
    if remaining_amount is not None:
        # Liquidity ran out: complete only if the leftover could not buy a hundredth anyway.
        price = last_price if last_price is not None else limit
        walk.complete = bool(walk.takes) and (
            _shares_for_amount(remaining_amount, price, rate, exponent, cap=None) <= 0
        )
    return walk


def _shares_for_amount(
    amount: Decimal, price: Decimal, rate: Decimal, exponent: Decimal, *, cap: Decimal | None
) -> Decimal:
    """The most hundredths of a share (≤ cap) that `amount` pays for at `price`, fee included."""
    if amount <= 0:
        return ZERO
    unit = price + (rate * _curve(price, exponent) if rate else ZERO)
    q = floor_shares(amount / unit)
    if cap is not None:
        q = min(q, cap)

    def cost(shares: Decimal) -> Decimal:
        return shares * price + taker_fee(size=shares, price=price, rate=rate, exponent=exponent)

    # The fee is floored, so one more hundredth may still fit; never more than that.
    bigger = q + SHARE_QUANTUM
    if (cap is None or bigger <= cap) and cost(bigger) <= amount:
        q = bigger
    while q > 0 and cost(q) > amount:
        q -= SHARE_QUANTUM
    return q
