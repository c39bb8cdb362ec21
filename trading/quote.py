"""The quote: what an order would do against a book, and every check the engine makes before
it moves money — pure, no I/O, no writes. Order placement (trading.services.orders) quotes
under the account row lock with the depletion the levels carry and then applies the walk;
the order ticket's preview (web.markets.ticket) quotes the published book as it is. One set
of rules, so the preview can only differ from the fill by what other orders took meanwhile.

The checks, in the order the engine makes them (docs/engine-rules.md):
  1. shape (`order_request`): VALIDATION_FAILED, INVALID_POST_ONLY_ORDER_TYPE,
     INVALID_ORDER_EXPIRATION;
  2. the market: MARKET_CLOSED, MARKET_NOT_READY (no book), INVALID_ORDER_MIN_TICK_SIZE
     (against the live tick; market orders get their default worst price here),
     INVALID_ORDER_MIN_SIZE, STALE_BOOK (an order that would take on a book not proven live);
  3. the account: INVALID_ORDER_NOT_ENOUGH_BALANCE (a BUY's reservation, worst fee
     included), INSUFFICIENT_POSITION (a SELL's free shares);
  4. the book: INVALID_POST_ONLY_ORDER (it would cross what is left of the book),
     FOK_ORDER_NOT_FILLED_ERROR (the walk cannot fill it all).
Refusals of steps 1–2 are raised and nothing is stored; those of steps 3–4 are stored as a
`rejected` order (STORED_REJECTIONS) so a retry with the same client_order_id repeats them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Protocol

from core import errors
from core.money import CASH_QUANTUM, SHARE_QUANTUM, ZERO, to_decimal
from marketdata import states as market_states
from marketdata.bus import BookTop
from trading.fillmodel import ONE, Walk, buy_reservation, crosses, walk_book

BUY, SELL = "BUY", "SELL"
LIMIT, MARKET = "limit", "market"
GTC, GTD, FOK, FAK = "GTC", "GTD", "FOK", "FAK"
GTD_MIN_LEAD = dt.timedelta(seconds=60)  # Polymarket's security threshold
MARKET_BUY_DEFAULT_WORST = Decimal("0.99")
DEFAULT_TICK = Decimal("0.01")

# Codes stored as `rejected` orders, to re-raise on a replay of the same client_order_id.
STORED_REJECTIONS: dict[str, type[errors.DomainError]] = {
    cls.code: cls
    for cls in (
        errors.InvalidOrderNotEnoughBalance,
        errors.InsufficientPosition,
        errors.InvalidPostOnlyOrder,
        errors.FokOrderNotFilledError,
    )
}


@dataclass(frozen=True)
class OrderRequest:
    """An order after shape checks and defaults (`price` is None for a market order until
    the tick is known: `priced` sets its default worst price)."""

    token_id: str
    side: str
    type: str
    time_in_force: str
    price: Decimal | None
    price_given: bool
    size: Decimal | None
    amount: Decimal | None
    expiration: dt.datetime | None
    post_only: bool
    client_order_id: str | None

    @property
    def is_buy(self) -> bool:
        return self.side == BUY

    @property
    def rests(self) -> bool:
        return self.time_in_force in (GTC, GTD)


# --- 1. shape -------------------------------------------------------------------------------------
def _invalid(field_name: str, message: str) -> errors.DomainError:
    return errors.ValidationFailed(details={field_name: [message]})


def _decimal(value: Any, field_name: str) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        return to_decimal(value)
    except (TypeError, ValueError) as exc:
        raise _invalid(field_name, "must be a decimal number (as a string)") from exc


def _expiration(value: Any) -> dt.datetime | None:
    if value is None or value in (0, "0", ""):
        return None
    if isinstance(value, dt.datetime):
        return value
    try:
        seconds = int(str(value))
    except ValueError as exc:
        raise _invalid("expiration", "must be unix seconds") from exc
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def order_request(
    *,
    token_id: Any,
    side: Any,
    type: Any,
    now: dt.datetime,
    price: Any = None,
    size: Any = None,
    amount: Any = None,
    time_in_force: Any = None,
    expiration: Any = None,
    post_only: Any = False,
    client_order_id: Any = None,
) -> OrderRequest:
    """Shape checks and defaults. Raises VALIDATION_FAILED, INVALID_POST_ONLY_ORDER_TYPE or
    INVALID_ORDER_EXPIRATION."""
    if not isinstance(token_id, str) or not token_id:
        raise _invalid("token_id", "required")
    if side not in (BUY, SELL):
        raise _invalid("side", "must be BUY or SELL")
    if type not in (LIMIT, MARKET):
        raise _invalid("type", "must be limit or market")
    tif = time_in_force or (GTC if type == LIMIT else FOK)
    if tif not in (GTC, GTD, FOK, FAK):
        raise _invalid("time_in_force", "must be GTC, GTD, FOK or FAK")
    if type == MARKET and tif not in (FOK, FAK):
        raise _invalid("time_in_force", "market orders are FOK or FAK")
    if not isinstance(post_only, bool):
        raise _invalid("post_only", "must be a boolean")
    if client_order_id is not None and (
        not isinstance(client_order_id, str) or not 0 < len(client_order_id) <= 128
    ):
        raise _invalid("client_order_id", "1 to 128 characters")
    price_d = _decimal(price, "price")
    size_d = _decimal(size, "size")
    amount_d = _decimal(amount, "amount")
    if type == MARKET and side == BUY:
        if amount_d is None or size_d is not None:
            raise _invalid("amount", "a market BUY spends `amount` (cash) and has no size")
        if amount_d <= 0 or amount_d != amount_d.quantize(CASH_QUANTUM):
            raise _invalid("amount", "must be > 0 with at most 6 decimals")
    else:
        if size_d is None or amount_d is not None:
            raise _invalid("size", "required (shares); `amount` is only for market BUYs")
        if size_d <= 0 or size_d != size_d.quantize(SHARE_QUANTUM):
            raise _invalid("size", "must be > 0 with at most 2 decimals")
    if type == LIMIT and price_d is None:
        raise _invalid("price", "required for limit orders")
    exp = _expiration(expiration)
    if post_only and (type != LIMIT or tif not in (GTC, GTD)):
        raise errors.InvalidPostOnlyOrderType()
    if tif == GTD:
        if exp is None or exp < now + GTD_MIN_LEAD:
            raise errors.InvalidOrderExpiration()
    elif exp is not None:
        raise _invalid("expiration", "only GTD orders carry an expiration")
    return OrderRequest(
        token_id=token_id,
        side=side,
        type=type,
        time_in_force=tif,
        price=price_d,
        price_given=price_d is not None,
        size=size_d,
        amount=amount_d,
        expiration=exp,
        post_only=post_only,
        client_order_id=client_order_id,
    )


# --- 2. the market --------------------------------------------------------------------------------
class MarketTerms(Protocol):
    """What a quote reads of a market (marketdata.models.Market, trading.store.MarketInfo)."""

    @property
    def closed(self) -> bool: ...
    @property
    def status(self) -> str: ...
    @property
    def accepting_orders(self) -> bool: ...
    @property
    def tick_size(self) -> Any: ...
    @property
    def min_order_size(self) -> Any: ...
    @property
    def fees_enabled(self) -> bool: ...
    @property
    def fee_rate(self) -> Any: ...
    @property
    def fee_exponent(self) -> Any: ...


def market_open(market: MarketTerms) -> bool:
    return not market.closed and market.status == market_states.OPEN and market.accepting_orders


def fee_params(market: MarketTerms) -> tuple[Decimal, Decimal]:
    """The market's taker fee rate and exponent (0 and 1 without fees)."""
    if not market.fees_enabled or not market.fee_rate:
        return ZERO, ONE
    return market.fee_rate, market.fee_exponent if market.fee_exponent is not None else ONE


def tick_of(top: BookTop | None, market: MarketTerms) -> Decimal:
    """The live tick (the book's), else the market's, else 0.01."""
    tick = (top.tick_size_value() if top is not None else None) or market.tick_size
    return tick if tick else DEFAULT_TICK


def priced(req: OrderRequest, tick: Decimal) -> OrderRequest:
    """The tick rules, and a market order's default worst price."""
    price = req.price
    if price is None:
        price = min(MARKET_BUY_DEFAULT_WORST, ONE - tick) if req.is_buy else tick
    if not (tick <= price <= ONE - tick) or price % tick != 0:
        raise errors.InvalidOrderMinTickSize(
            details={"price": [str(price)], "tick_size": [str(tick)]}
        )
    return replace(req, price=price)


def crossing_levels(top: BookTop, req: OrderRequest) -> list[tuple[Decimal, Decimal]]:
    """The opposite side best-first, only the levels inside the order's limit."""
    assert req.price is not None
    out: list[tuple[Decimal, Decimal]] = []
    for p, s in top.asks if req.is_buy else top.bids:
        price = Decimal(p)
        if not crosses(req.side, price, req.price):
            break
        out.append((price, Decimal(s)))
    return out


def queue_ahead_at(top: BookTop, side: str, price: Decimal) -> Decimal:
    """The size shown at `price` on the order's own side of the book as it arrives: what
    must trade at that price before a trade there can reach it (the queue-position model of
    maker fills, docs/fill-model.md). 0 when no level is shown at that price."""
    for p, s in top.bids if side == BUY else top.asks:
        if Decimal(p) == price:
            return Decimal(s)
    return ZERO


# --- the quote ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Quote:
    """What an order would do now. `req` has its price; `crossing` the levels inside it (as
    published); `walk` what it takes of what is left of them (empty for an order that does
    not take, or that is refused); `error` the engine's refusal, if any."""

    req: OrderRequest
    rate: Decimal
    exponent: Decimal
    crossing: list[tuple[Decimal, Decimal]]
    walk: Walk
    error: errors.DomainError | None = None

    @property
    def stored(self) -> bool:
        """Whether the refusal is stored as a rejected order (steps 3–4)."""
        return self.error is not None and self.error.code in STORED_REJECTIONS


def market_checks(
    req: OrderRequest, market: MarketTerms, top: BookTop | None, live: bool
) -> OrderRequest:
    """Step 2: raises MARKET_CLOSED, MARKET_NOT_READY, the tick and size rules, STALE_BOOK;
    returns the request with its price."""
    if not market_open(market):
        raise errors.MarketClosed()
    if top is None:
        raise errors.MarketNotReady()
    req = priced(req, tick_of(top, market))
    if market.min_order_size and req.size is not None and req.size < market.min_order_size:
        raise errors.InvalidOrderMinSize(
            details={"size": [str(req.size)], "min_order_size": [str(market.min_order_size)]}
        )
    takes = req.type == MARKET or (not req.post_only and bool(crossing_levels(top, req)))
    if takes and not live:
        raise errors.StaleBook()
    return req


def quote(
    req: OrderRequest,
    market: MarketTerms,
    top: BookTop,
    *,
    live: bool,
    available_cash: Decimal | None,
    free_shares: Decimal | None,
    taken: Sequence[Decimal] | None = None,
) -> Quote:
    """Steps 3 and 4 for a request that passed `market_checks` (it has its price).
    `available_cash` / `free_shares`: the account's (None: not known, not checked);
    `taken`: what depletion took of each crossing level (None: nothing)."""
    assert req.price is not None
    rate, exponent = fee_params(market)
    crossing = crossing_levels(top, req)
    none = Walk()

    def refused(error: errors.DomainError) -> Quote:
        return Quote(req, rate, exponent, crossing, none, error)

    if req.is_buy and available_cash is not None:
        need = req.amount
        if need is None:
            assert req.size is not None
            need = buy_reservation(price=req.price, size=req.size, rate=rate, exponent=exponent)
        if available_cash < need:
            return refused(errors.InvalidOrderNotEnoughBalance())
    if not req.is_buy and free_shares is not None:
        assert req.size is not None
        if free_shares < req.size:
            return refused(errors.InsufficientPosition())
    levels = [
        (p, s, s - (taken[i] if taken is not None else ZERO)) for i, (p, s) in enumerate(crossing)
    ]
    if req.post_only or not live:
        # A maker-only order (or one that does not cross, on a book not proven live): it may
        # not trade; refused only if it would cross what is left of the book.
        if any(available > 0 for _, _, available in levels):
            return refused(errors.InvalidPostOnlyOrder())
        return Quote(req, rate, exponent, crossing, none)
    if not crossing:
        if req.time_in_force == FOK:
            return refused(errors.FokOrderNotFilledError())
        return Quote(req, rate, exponent, crossing, none)
    walk = walk_book(
        side=req.side,
        levels=levels,
        limit=req.price,
        size=req.size if req.amount is None else None,
        amount=req.amount,
        rate=rate,
        exponent=exponent,
    )
    if req.time_in_force == FOK and not walk.complete:
        return refused(errors.FokOrderNotFilledError())
    return Quote(req, rate, exponent, crossing, walk)
