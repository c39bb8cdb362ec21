"""The order ticket: what the form sends, the preview computed from the live book, and every
engine error as a plain sentence next to the field it concerns.

The preview is the engine's own quote (trading.quote: shape checks, the market checks, the
balance or position check, post-only, the walk with fees, FOK) of the published book, with no
side effects: nothing is stored, no depletion is taken. It can therefore differ from the fill
by what other simulated orders took from the same levels in the meantime, and the ticket
says so.

Prices are entered in cents (45.5 = 0.455), as Polymarket's own ticket does; the engine gets
dollars.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from django.http import QueryDict
from django.utils import timezone

from accounts.models import Account, Position
from core import errors
from core.money import ZERO
from marketdata.bus import BookTop
from marketdata.models import Market, Token
from trading.fillmodel import ONE, buy_reservation
from trading.models import Order, Side
from trading.quote import Quote, market_checks, order_request, quote, tick_of

HUNDRED = Decimal("100")
BIG_IMPACT = Decimal("0.05")  # average price this far (5¢) past the best level: warn

# Form fields an error can sit next to. "quantity" is whichever of size/amount the ticket
# shows (amount for a market BUY, size otherwise); "form" is the banner above the button.
FIELDS = (
    "account",
    "outcome",
    "side",
    "type",
    "price",
    "quantity",
    "time_in_force",
    "expiration",
    "post_only",
    "form",
)

# code -> (field, sentence). Sentences may use {tick}, {tick_c}, {min_size}, {best} (cents),
# {detail}. EVERY engine code (core.errors.ENGINE_ERROR_CODES) must be here: a test enforces it.
ERROR_SENTENCES: dict[str, tuple[str, str]] = {
    "INVALID_ORDER_MIN_TICK_SIZE": (
        "price",
        "Use a price in steps of {tick_c}, between {tick_c} and {max_c}.",
    ),
    "INVALID_ORDER_MIN_SIZE": ("quantity", "This market's minimum order is {min_size} shares."),
    "INVALID_ORDER_DUPLICATED": (
        "form",
        "This order was already sent with different details. Check the ticket and send it again.",
    ),
    "INVALID_ORDER_NOT_ENOUGH_BALANCE": (
        "quantity",
        "Not enough available cash in this account for this order (fees included).",
    ),
    "INSUFFICIENT_POSITION": (
        "quantity",
        "You don't hold enough shares of this outcome to sell that many.",
    ),
    "INVALID_ORDER_EXPIRATION": (
        "expiration",
        "A good-til-date order must expire at least one minute from now.",
    ),
    "INVALID_POST_ONLY_ORDER_TYPE": (
        "post_only",
        "Post-only works only with limit orders that rest (GTC or GTD).",
    ),
    "INVALID_POST_ONLY_ORDER": (
        "price",
        "Post-only: this price would trade at once against the book. Move it away from the "
        "best price or untick post-only.",
    ),
    "FOK_ORDER_NOT_FILLED_ERROR": (
        "quantity",
        "Fill-or-kill: there isn't enough liquidity at your price to fill all of it now. Try a "
        "smaller size or fill-and-kill (FAK).",
    ),
    "MARKET_CLOSED": ("form", "This market is closed to new orders."),
    "MARKET_NOT_READY": (
        "outcome",
        "There is no live order book for this outcome yet. Try again in a few seconds.",
    ),
    "STALE_BOOK": (
        "form",
        "The live order book is catching up with the exchange, so orders that trade now are "
        "paused. Try again in a few seconds, or place a resting limit order.",
    ),
    "ACCOUNT_CLOSED": ("account", "This account is closed and cannot trade."),
    "VALIDATION_FAILED": ("form", "Some fields need attention."),
    # Not engine codes, but the ticket can meet them too.
    "TENANT_DISABLED": ("account", "The firm that manages this account has paused its trading."),
    "NOT_FOUND": ("account", "Choose one of your accounts."),
    "RATE_LIMIT_EXCEEDED": ("form", "Too many orders in a short time. Wait a moment."),
    "SERVICE_UNAVAILABLE": ("form", "The book is busy right now. Send the order again."),
}

# VALIDATION_FAILED details name engine fields; the ticket's field for each.
_DETAIL_FIELDS = {
    "token_id": "outcome",
    "side": "side",
    "type": "type",
    "price": "price",
    "size": "quantity",
    "amount": "quantity",
    "time_in_force": "time_in_force",
    "expiration": "expiration",
    "post_only": "post_only",
    "client_order_id": "form",
    "account_id": "account",
}
# Plain versions of the engine's shape messages (order_request's `_invalid` texts).
_DETAIL_SENTENCES = {
    "must be a decimal number (as a string)": "Enter a number.",
    "must be > 0 with at most 2 decimals": "Enter more than 0 shares, in hundredths at most.",
    "must be > 0 with at most 6 decimals": "Enter an amount above $0.",
    "required for limit orders": "Enter a limit price.",
    "market orders are FOK or FAK": "Market orders are fill-or-kill or fill-and-kill.",
    "only GTD orders carry an expiration": "Only good-til-date orders have an expiry.",
    "a market BUY spends `amount` (cash) and has no size": "Enter how many dollars to spend.",
    "required (shares); `amount` is only for market BUYs": "Enter a number of shares.",
    "unknown token": "Choose an outcome.",
    "must be BUY or SELL": "Choose Buy or Sell.",
    "must be limit or market": "Choose Limit or Market.",
    "must be GTC, GTD, FOK or FAK": "Choose how long the order lasts.",
    "must be unix seconds": "Enter a valid date and time.",
}


def _c(value: Decimal) -> str:
    return format((value * HUNDRED).normalize(), "f") + "¢"


@dataclass
class TicketErrors:
    """Sentences by ticket field (see FIELDS)."""

    by_field: dict[str, list[str]] = field(default_factory=dict)
    code: str | None = None

    def add(self, name: str, sentence: str) -> None:
        self.by_field.setdefault(name, []).append(sentence)

    def __bool__(self) -> bool:
        return bool(self.by_field)


def error_sentences(
    exc: errors.DomainError, *, market: Market | None = None, top: BookTop | None = None
) -> TicketErrors:
    """The ticket's sentences for one error: its field's sentence and, for VALIDATION_FAILED,
    one per detail next to the detail's own field."""
    out = TicketErrors(code=exc.code)
    target, template = ERROR_SENTENCES.get(exc.code, ("form", exc.message))
    tick = None
    if top is not None and market is not None:
        tick = tick_of(top, market)
    elif market is not None and market.tick_size:
        tick = market.tick_size
    details = exc.details or {}
    if tick is None and details.get("tick_size"):
        tick = Decimal(str(details["tick_size"][0]))
    tick = tick or Decimal("0.01")
    min_size = market.min_order_size.normalize() if market and market.min_order_size else None
    if min_size is None and details.get("min_order_size"):
        min_size = details["min_order_size"][0]
    sentence = template.format(
        tick_c=_c(tick), max_c=_c(ONE - tick), min_size=min_size if min_size is not None else "?"
    )
    if exc.code == "VALIDATION_FAILED" and details:
        placed = False
        for name, messages in details.items():
            where = _DETAIL_FIELDS.get(name)
            if where is None:
                continue
            for message in messages if isinstance(messages, list) else [messages]:
                out.add(where, _DETAIL_SENTENCES.get(str(message), str(message).capitalize()))
                placed = True
        if placed:
            return out
    out.add(target, sentence)
    return out


# --- the form ----------------------------------------------------------------------------------
@dataclass
class TicketForm:
    """The ticket's values as typed (strings) plus the engine arguments they make."""

    account: str = ""
    token: str = ""
    side: str = Side.BUY
    type: str = Order.Type.LIMIT
    price_cents: str = ""
    size: str = ""
    amount: str = ""
    time_in_force: str = ""
    expires_at: str = ""
    tz_offset: str = ""
    post_only: bool = False
    client_order_id: str = ""

    @classmethod
    def from_data(cls, data: QueryDict, *, default_token: str = "") -> TicketForm:
        def text(name: str, limit: int = 64) -> str:
            return (data.get(name) or "").strip()[:limit]

        form = cls(
            account=text("account"),
            token=text("token", 100) or default_token,
            side=text("side") or Side.BUY,
            type=text("type") or Order.Type.LIMIT,
            price_cents=text("price"),
            size=text("size"),
            amount=text("amount"),
            time_in_force=(
                text("tif_market") if text("type") == Order.Type.MARKET else text("tif_limit")
            )
            or text("time_in_force"),
            expires_at=text("expires_at"),
            tz_offset=text("tz_offset"),
            post_only=data.get("post_only") in ("on", "1", "true"),
            client_order_id=text("client_order_id", 128),
        )
        return form

    @property
    def market_buy(self) -> bool:
        return self.type == Order.Type.MARKET and self.side == Side.BUY

    @property
    def quantity_field(self) -> str:
        return "amount" if self.market_buy else "size"

    def tif(self) -> str:
        """The time in force the ticket means: its choice if it fits the order type, else the
        type's default (the selector offers GTC/GTD for limits, FOK/FAK for market orders)."""
        limit_tifs = (Order.TimeInForce.GTC, Order.TimeInForce.GTD)
        if self.type == Order.Type.MARKET:
            return self.time_in_force if self.time_in_force not in limit_tifs else "FOK"
        return self.time_in_force or Order.TimeInForce.GTC

    def price(self) -> Decimal | str | None:
        """Dollars from the typed cents; the raw text when it is not a number (the engine
        then reports it), None when empty."""
        if not self.price_cents:
            return None
        try:
            return Decimal(self.price_cents) / HUNDRED
        except InvalidOperation:
            return self.price_cents

    def expiration(self) -> int | str | None:
        """Unix seconds from the datetime-local value and the browser's UTC offset (minutes,
        JS getTimezoneOffset: UTC − local); UTC without an offset."""
        if self.tif() != Order.TimeInForce.GTD:
            return None
        if not self.expires_at:
            return None
        try:
            local = dt.datetime.fromisoformat(self.expires_at)
            offset = int(self.tz_offset or 0)
        except ValueError:
            return "invalid"
        if local.tzinfo is None:
            local = local.replace(tzinfo=dt.UTC) + dt.timedelta(minutes=offset)
        return int(local.timestamp())

    def engine_args(self) -> dict[str, Any]:
        return {
            "token_id": self.token,
            "side": self.side,
            "type": self.type,
            "price": self.price() if self.type == Order.Type.LIMIT else None,
            "size": None if self.market_buy else (self.size or None),
            "amount": (self.amount or None) if self.market_buy else None,
            "time_in_force": self.tif(),
            "expiration": self.expiration(),
            "post_only": self.post_only and self.type == Order.Type.LIMIT,
            "client_order_id": self.client_order_id or None,
        }


def new_client_order_id() -> str:
    """A fresh id per ticket render: a resend of the same ticket (double click, retry after a
    lost response) is answered with the first order instead of trading twice."""
    return f"web-{uuid.uuid4().hex}"


# --- the preview ---------------------------------------------------------------------------------
@dataclass
class Preview:
    """What the order would do now against the published book."""

    ready: bool = False
    side: str = Side.BUY
    fill_now: Decimal = ZERO  # shares that trade at once
    avg_price: Decimal | None = None
    notional: Decimal = ZERO
    fee: Decimal = ZERO
    rests: Decimal = ZERO  # shares left resting at the limit
    limit_price: Decimal | None = None
    reserved: Decimal = ZERO  # cash held for the resting part (BUY)
    cost: Decimal = ZERO  # BUY: cash it may use; SELL: 0
    proceeds: Decimal = ZERO  # SELL: cash received, fee deducted, if it all fills
    max_payout: Decimal = ZERO  # BUY: $1 per share if the outcome wins
    fee_rate: Decimal = ZERO
    warnings: list[str] = field(default_factory=list)
    errors: TicketErrors = field(default_factory=TicketErrors)

    @property
    def shares_total(self) -> Decimal:
        return self.fill_now + self.rests


def order_preview(
    *,
    form: TicketForm,
    market: Market,
    token: Token | None,
    top: BookTop | None,
    live: bool,
    account: Account | None,
    position: Position | None,
) -> Preview:
    """The preview of `form` against `top` (no side effects). Problems the engine would
    refuse appear in `errors` with the same sentences a refusal gets; softer ones (partial
    fills, price impact) in `warnings`."""
    preview = Preview(side=form.side)
    if token is None:
        preview.errors.add("outcome", "Choose an outcome.")
        return preview
    try:
        req = order_request(**{**form.engine_args(), "client_order_id": None}, now=timezone.now())
    except errors.DomainError as exc:
        if not market.is_tradable or market.closed or not market.accepting_orders:
            preview.errors = error_sentences(errors.MarketClosed(), market=market)
        elif not _incomplete(form):  # still typing: no sentence yet
            preview.errors = error_sentences(exc, market=market, top=top)
        return preview
    try:
        req = market_checks(req, market, top, live)
    except errors.DomainError as exc:
        preview.errors = error_sentences(exc, market=market, top=top)
        return preview
    assert top is not None and req.price is not None
    free = None
    if account is not None:
        free = ZERO
        if position is not None and position.status == Position.Status.OPEN:
            free = position.size - position.reserved_size
    q = quote(
        req,
        market,
        top,
        live=live,
        available_cash=account.available_cash if account is not None else None,
        free_shares=free,
    )
    preview.fee_rate = q.rate
    preview.limit_price = req.price
    if q.error is not None:
        preview.errors = error_sentences(q.error, market=market, top=top)
        return preview
    _walk_into(preview, q)
    preview.ready = True
    return preview


def _incomplete(form: TicketForm) -> bool:
    """Nothing typed yet where a number is needed: the preview stays quiet instead of
    scolding a half-filled ticket."""
    if form.market_buy:
        return not form.amount
    if not form.size:
        return True
    return form.type == Order.Type.LIMIT and not form.price_cents


def _walk_into(preview: Preview, q: Quote) -> None:
    """What the quote's walk means for the trader: what fills now, what rests, its cost."""
    req, walk = q.req, q.walk
    assert req.price is not None
    preview.fill_now = walk.filled
    preview.notional = walk.notional
    preview.fee = walk.fees
    preview.avg_price = walk.vwap
    remaining = req.size - walk.filled if req.size is not None else ZERO
    if req.rests:
        preview.rests = remaining
    elif not walk.complete:
        if walk.filled:
            preview.warnings.append(
                "Only part of this order can fill now; the rest will be cancelled (FAK)."
            )
        else:
            preview.warnings.append("Nothing can fill at this price now (FAK): it would cancel.")
    if walk.takes and preview.avg_price is not None:
        best = walk.takes[0].price
        if abs(preview.avg_price - best) >= BIG_IMPACT:
            preview.warnings.append(
                f"Large order for this book: the average price {_c(preview.avg_price)} is "
                f"{_c(abs(preview.avg_price - best))} away from the best price."
            )
    if req.is_buy:
        preview.reserved = (
            buy_reservation(price=req.price, size=remaining, rate=q.rate, exponent=q.exponent)
            if preview.rests
            else ZERO
        )
        preview.cost = preview.notional + preview.fee + preview.reserved
        preview.max_payout = preview.fill_now + preview.rests  # $1 per share on a win
    else:
        preview.proceeds = preview.notional - preview.fee + req.price * preview.rests


def default_expiry(now: dt.datetime | None = None) -> str:
    """A datetime-local value one day ahead (UTC; the browser script shows local time)."""
    at = (now or timezone.now()) + dt.timedelta(days=1)
    return at.strftime("%Y-%m-%dT%H:%M")
