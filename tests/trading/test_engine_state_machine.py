"""The engine against an independent reference model (docs/engine-rules.md §2, §3, §5, §7).

A Hypothesis `RuleBasedStateMachine` drives the real services — order placement (BUY/SELL,
market/limit, GTC/GTD/FOK/FAK, post-only, valid and invalid prices, sizes and amounts),
cancels (one, all, by market), expiry, books published on the price bus (fresh,
stale, dead feed, crossed, refreshed levels that reset depletion), market verdicts through
marketdata's lifecycle service and settlement through the real settlement service (winner,
loser, void 50-50, ambiguous then resolved by an operator, closed-pending), account resets and
closes — and keeps its own model of every account: cash, reserved cash, realized P&L, fees,
positions (size, reserved shares, cost basis, realized P&L), orders (status, filled size,
reservations) and the depletion memory of each book level.

The model computes every expectation from the spec's rules, not from engine code: the walk of
the token's own book best-first inside the limit, less depletion; the taker fee
`size × rate × (p(1−p))^e` floored to 5 decimals; a BUY's reservation `price × size` plus the
worst fee at min(price, 0.5) rounded up to cash precision; the most hundredths of a share a
cash amount pays for (a binary search, not the engine's estimate-and-adjust); average-cost
realized P&L; payouts of size × final price. After every step the ledger audit must be clean
and every account must equal its model exactly (Decimal equality; error codes included).

Deterministic for CI: `derandomize=True`, bounded examples and steps, no deadline.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_UP, Decimal
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from accounts.models import Account, Position
from core import errors
from marketdata import resolution as rs
from marketdata.bus import get_bus, now_ms
from marketdata.services import market_apply_verdict, market_resolve_manually
from tests.runtime import redis_flush
from tests.trading.conftest import feed_alive, make_market, open_account, publish_book
from trading.audit import ledger_audit
from trading.models import Order
from trading.services import (
    account_close,
    account_reset,
    market_settle,
    order_cancel,
    order_cancel_account,
    order_cancel_market,
    order_place,
    orders_expire,
)

pytestmark = pytest.mark.django_db

D = Decimal
ZERO = D("0")
ONE = D("1")
CENT = D("0.01")
TICK = D("0.01")
MIN_SIZE = D("5")
STARTING = D("1000")

# --- reference arithmetic (the spec's formulas, written here independently) ------------------


def fee_of(q: Decimal, p: Decimal, rate: Decimal, exponent: int) -> Decimal:
    """Taker fee: size × rate × (p(1−p))^exponent, floored to 5 decimals."""
    if not rate or not q:
        return ZERO
    return (q * rate * (p * (ONE - p)) ** exponent).quantize(D("0.00001"), rounding=ROUND_DOWN)


def reservation_of(price: Decimal, size: Decimal, rate: Decimal, exponent: int) -> Decimal:
    """What a resting BUY holds: price × size plus the largest fee any fill at or under the
    limit can cost (p(1−p) peaks at 0.5), rounded up to cash precision."""
    if not rate:
        return price * size
    worst = min(price, D("0.5"))
    fee = (size * rate * (worst * (ONE - worst)) ** exponent).quantize(
        D("0.000001"), rounding=ROUND_UP
    )
    return price * size + fee


def shares_for(
    amount: Decimal, p: Decimal, rate: Decimal, exponent: int, cap: Decimal | None
) -> Decimal:
    """The most hundredths q (≤ cap) with q × p + fee(q) ≤ amount, by binary search."""
    if amount <= 0:
        return ZERO
    hi = int(amount / p * 100) + 2
    if cap is not None:
        hi = min(hi, int(cap * 100))
    lo = 0  # cost(lo) ≤ amount always
    while lo < hi:
        mid = (lo + hi + 1) // 2
        q = D(mid) / 100
        if q * p + fee_of(q, p, rate, exponent) <= amount:
            lo = mid
        else:
            hi = mid - 1
    return D(lo) / 100


def cash_q(value: Decimal) -> Decimal:
    return value.quantize(D("0.000001"), rounding=ROUND_HALF_EVEN)


# --- the model ---------------------------------------------------------------------------------


@dataclass
class MBook:
    bids: list[tuple[Decimal, Decimal]]  # best first (descending)
    asks: list[tuple[Decimal, Decimal]]  # best first (ascending)
    fresh: bool
    tick: Decimal = TICK


@dataclass
class MMarket:
    market: Any
    tokens: tuple[str, str]
    rate: Decimal
    exponent: int
    status: str = "open"  # open | closed | resolved | void | ambiguous
    settled: bool = False


@dataclass
class MPosition:
    size: Decimal = ZERO
    reserved: Decimal = ZERO
    cost: Decimal = ZERO
    realized: Decimal = ZERO


@dataclass
class MOrder:
    pk: Any
    account: Any
    token: str
    market_id: str
    side: str
    tif: str
    epoch: int
    status: str
    filled: Decimal
    reserved_cash: Decimal = ZERO
    reserved_shares: Decimal = ZERO


@dataclass
class MAccount:
    pk: Any
    cash: Decimal = STARTING
    reserved: Decimal = ZERO
    realized: Decimal = ZERO
    fees: Decimal = ZERO
    epoch: int = 0
    closed: bool = False
    positions: dict[tuple[str, int], MPosition] = field(default_factory=dict)

    def position(self, token: str) -> MPosition | None:
        return self.positions.get((token, self.epoch))


class Expected(Exception):
    """The model's predicted rejection: `code`, and whether the engine stores a rejected order."""

    def __init__(self, code: str, stored: bool = False) -> None:
        super().__init__(code)
        self.code = code
        self.stored = stored


# Valid values mostly; one draw in eight picks from the invalid ones.
SIZES = (["5", "7.5", "10", "25", "60", "100", "333.33"], ["0", "-1", "0.001", "1", "4.99"])
AMOUNTS = (
    ["0.000001", "0.004", "0.01", "1", "3.33", "10", "50", "250", "2000"],
    ["0", "-5", "0.0000001"],
)
PRICES = (
    ["0.01", "0.2", "0.35", "0.4", "0.5", "0.55", "0.555", "0.62", "0.8", "0.99"],
    ["-0.1", "0", "0.005", "1", "1.5"],
)
BOOK_PRICES = [D(f"0.{n:02d}") for n in range(5, 96, 5)]
LEVEL_SIZES = [D(s) for s in ("1", "3.5", "10", "20", "50", "120.25")]
# What the run exercised (asserted at the end, so a distribution change cannot silently turn
# the test into one that only sees rejections).
SEEN: Counter[str] = Counter()


def _wire(params: dict[str, Any]) -> dict[str, Any]:
    expiration = params["expiration"]
    return {**params, "expiration": int(expiration.timestamp()) if expiration else None}


TIFS = st.sampled_from([None, None, None, "GTC", "GTD", "FOK", "FAK"])
POST_ONLY = st.sampled_from([False] * 7 + [True])


def _pick(data: Any, choices: tuple[list[str], list[str]], label: str) -> str:
    valid, invalid = choices
    pool = invalid if data.draw(st.integers(0, 7), label=f"{label} invalid") == 0 else valid
    return str(data.draw(st.sampled_from(pool), label=label))


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._atomic = transaction.atomic()
        self._atomic.__enter__()
        redis_flush()  # each example starts with no books and no depletion memory
        feed_alive()
        self.markets: list[MMarket] = []
        self.books: dict[str, MBook] = {}
        self.dead_shards: set[int] = set()
        self.depletion: dict[tuple[str, str, Decimal], tuple[Decimal, Decimal]] = {}
        self.accounts: list[MAccount] = []
        self.orders: dict[Any, MOrder] = {}
        self.rejected = 0
        self.fills_of: dict[Any, int] = {}
        # client_order_id → (account, request, first result: the order's pk or the code of
        # its stored rejection)
        self.by_client_id: dict[str, tuple[MAccount, dict[str, Any], Any]] = {}
        self._client_ids = 0
        self._new_market(rate=D("0.02"), exponent=1)
        self._new_market(rate=ZERO, exponent=1)
        for _ in range(2):
            self._new_account()
        # Books on three of the four tokens (the fourth shows MARKET_NOT_READY until a rule
        # publishes one): asks for BUYs to take, bids for SELLs.
        for token in self._all_tokens()[:3]:
            bids = [(D("0.45"), D("50")), (D("0.4"), D("120.25")), (D("0.3"), D("20"))]
            asks = [(D("0.5"), D("10")), (D("0.55"), D("50")), (D("0.6"), D("120.25"))]
            self._publish(token, bids, asks, fresh=True)
        # Each account starts holding shares (bought through the engine, checked like any
        # order), so SELLs have something to sell in every example.
        for n, (acc, token) in enumerate(zip(self.accounts, self._all_tokens()[1:3], strict=True)):
            params = {
                "token_id": token,
                "side": "BUY",
                "type": "market",
                "price": None,
                "size": None,
                "amount": "40",
                "time_in_force": None,
                "expiration": None,
                "post_only": False,
                "client_order_id": f"init-{n}",  # something to retry from the first step
            }
            self._submit(acc, params, timezone.now())
        params = {**params, "client_order_id": None}
        # An amount too small to buy one hundredth of a share fills nothing: FOK rejected,
        # FAK canceled (regression: both were once `matched` with no fills).
        for tif in ("FOK", "FAK"):
            tiny = {**params, "amount": "0.000001", "time_in_force": tif}
            self._submit(self.accounts[0], tiny, timezone.now())
        # More than the balance, and a SELL of shares not held: stored rejections.
        too_big = {**params, "type": "limit", "price": "0.5", "size": "5000", "amount": None}
        self._submit(self.accounts[0], too_big, timezone.now())
        naked = {**too_big, "side": "SELL", "size": "10", "token_id": self._all_tokens()[0]}
        self._submit(self.accounts[0], naked, timezone.now())

    def teardown(self) -> None:
        transaction.set_rollback(True)
        self._atomic.__exit__(None, None, None)
        redis_flush()

    # --- helpers ---------------------------------------------------------------------------
    def _new_market(self, *, rate: Decimal, exponent: int) -> None:
        market, yes, no = make_market(
            fees_enabled=bool(rate), fee_rate=rate, fee_exponent=D(exponent)
        )
        self.markets.append(MMarket(market, (yes.token_id, no.token_id), rate, exponent))

    def _new_account(self) -> None:
        account = open_account(str(STARTING))
        self.accounts.append(MAccount(account.pk))

    def _market_of(self, token: str) -> MMarket:
        return next(m for m in self.markets if token in m.tokens)

    def _all_tokens(self) -> list[str]:
        return [t for m in self.markets for t in m.tokens]

    def _live(self, token: str) -> bool:
        book = self.books.get(token)
        return bool(book and book.fresh and get_bus().shard_of(token) not in self.dead_shards)

    def _taken(self, token: str, side: str, price: Decimal, published: Decimal) -> Decimal:
        memory = self.depletion.get((token, side, price))
        if memory is None or memory[0] != published:
            return ZERO  # the feed changed the level since: whole again
        return memory[1]

    def _release(self, acc: MAccount, order: MOrder, status: str) -> None:
        acc.reserved -= order.reserved_cash
        if order.reserved_shares:
            pos = acc.positions[(order.token, order.epoch)]
            pos.reserved -= order.reserved_shares
        order.reserved_cash = order.reserved_shares = ZERO
        order.status = status

    def _live_orders(self, acc: MAccount, **match: Any) -> list[MOrder]:
        return [
            o
            for o in self.orders.values()
            if o.account == acc.pk
            and o.status == "live"
            and all(getattr(o, k) == v for k, v in match.items())
        ]

    # --- the model of order_place ------------------------------------------------------------
    def _predict(self, acc: MAccount, p: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
        """Apply an order to the model; return what the engine must report, or raise Expected."""
        side, otype, tif = p["side"], p["type"], p["time_in_force"]
        tif = tif or ("GTC" if otype == "limit" else "FOK")
        if otype == "market" and tif not in ("FOK", "FAK"):
            raise Expected("VALIDATION_FAILED")
        price = D(p["price"]) if p["price"] is not None else None
        size = D(p["size"]) if p["size"] is not None else None
        amount = D(p["amount"]) if p["amount"] is not None else None
        market_buy = otype == "market" and side == "BUY"
        if market_buy:
            if amount is None or size is not None:
                raise Expected("VALIDATION_FAILED")
            if amount <= 0 or amount != amount.quantize(D("0.000001")):
                raise Expected("VALIDATION_FAILED")
        else:
            if size is None or amount is not None:
                raise Expected("VALIDATION_FAILED")
            if size <= 0 or size != size.quantize(CENT):
                raise Expected("VALIDATION_FAILED")
        if otype == "limit" and price is None:
            raise Expected("VALIDATION_FAILED")
        shares = size if size is not None else ZERO  # exactly one of size/amount is set
        exp = p["expiration"]
        if p["post_only"] and (otype != "limit" or tif not in ("GTC", "GTD")):
            raise Expected("INVALID_POST_ONLY_ORDER_TYPE")
        if tif == "GTD":
            if exp is None or exp < now + dt.timedelta(seconds=60):
                raise Expected("INVALID_ORDER_EXPIRATION")
        elif exp is not None:
            raise Expected("VALIDATION_FAILED")
        if acc.closed:
            raise Expected("ACCOUNT_CLOSED")
        token = p["token_id"]
        mm = self._market_of(token)
        if mm.status != "open":
            raise Expected("MARKET_CLOSED")
        book = self.books.get(token)
        if book is None:
            raise Expected("MARKET_NOT_READY")
        tick = book.tick  # the live tick (Polymarket changes it while a market trades)
        if price is None:
            price = min(D("0.99"), ONE - tick) if side == "BUY" else tick
        if not (tick <= price <= ONE - tick) or price % tick != 0:
            raise Expected("INVALID_ORDER_MIN_TICK_SIZE")
        if size is not None and size < MIN_SIZE:
            raise Expected("INVALID_ORDER_MIN_SIZE")
        book_side = "asks" if side == "BUY" else "bids"
        opposite = book.asks if side == "BUY" else book.bids
        crossing = []
        for lp, ls in opposite:
            if (lp <= price) if side == "BUY" else (lp >= price):
                crossing.append((lp, ls))
            else:
                break
        live = self._live(token)
        takes_liquidity = otype == "market" or (not p["post_only"] and bool(crossing))
        if not live and takes_liquidity:
            raise Expected("STALE_BOOK")
        # Under the lock: balance and holdings.
        rate, exponent = mm.rate, mm.exponent
        pos = acc.position(token)
        if side == "BUY":
            need = amount if amount is not None else reservation_of(price, shares, rate, exponent)
            if acc.cash - acc.reserved < need:
                raise Expected("INVALID_ORDER_NOT_ENOUGH_BALANCE", stored=True)
        else:
            held = pos.size - pos.reserved if pos is not None else ZERO
            if held < shares:
                raise Expected("INSUFFICIENT_POSITION", stored=True)
        takes: list[tuple[Decimal, Decimal, Decimal, Decimal]] = []  # price, q, fee, published
        complete = False
        if p["post_only"] or not live:
            if any(ls - self._taken(token, book_side, lp, ls) > 0 for lp, ls in crossing):
                raise Expected("INVALID_POST_ONLY_ORDER", stored=True)
        elif crossing:
            remaining_size, remaining_amount = shares, amount
            last: Decimal | None = None
            for lp, ls in crossing:
                last = lp
                room = (ls - self._taken(token, book_side, lp, ls)).quantize(
                    CENT, rounding=ROUND_DOWN
                )
                if room <= 0:
                    continue
                if remaining_amount is None:
                    q = min(room, remaining_size)
                else:
                    q = shares_for(remaining_amount, lp, rate, exponent, cap=room)
                    if q <= 0:  # the rest cannot buy a hundredth here: done, if anything filled
                        complete = bool(takes)
                        break
                fee = fee_of(q, lp, rate, exponent)
                takes.append((lp, q, fee, ls))
                if remaining_amount is None:
                    remaining_size -= q
                    if remaining_size <= 0:
                        complete = True
                        break
                else:
                    remaining_amount -= q * lp + fee
                    if q < room:
                        complete = True
                        break
            else:
                if remaining_amount is not None:
                    at = last if last is not None else price
                    complete = bool(takes) and (
                        shares_for(remaining_amount, at, rate, exponent, cap=None) <= 0
                    )
            if tif == "FOK" and not complete:
                raise Expected("FOK_ORDER_NOT_FILLED_ERROR", stored=True)
        elif tif == "FOK":
            raise Expected("FOK_ORDER_NOT_FILLED_ERROR", stored=True)
        # The order exists: depletion, money, position, status, reservation.
        for lp, q, _fee, ls in takes:
            key = (token, book_side, lp)
            self.depletion[key] = (ls, self._taken(token, book_side, lp, ls) + q)
        filled = sum((q for _, q, _, _ in takes), ZERO)
        if takes and pos is None:
            pos = acc.positions[(token, acc.epoch)] = MPosition()
        for lp, q, fee, _ in takes:
            assert pos is not None
            notional = lp * q
            if side == "BUY":
                pos.size += q
                pos.cost += notional
                realized = -fee
                acc.cash -= notional + fee
            else:
                released = pos.cost if q == pos.size else cash_q(pos.cost * q / pos.size)
                realized = notional - released - fee
                pos.size -= q
                pos.cost -= released
                if pos.size == 0:
                    pos.cost = ZERO
                acc.cash += notional - fee
            pos.realized += realized
            acc.realized += realized
            acc.fees += fee
        if amount is not None:
            done, remaining = complete, ZERO
        else:
            remaining = shares - filled
            done = remaining == 0
        order = MOrder(
            None, acc.pk, token, mm.market.condition_id, side, tif, acc.epoch, "", filled
        )
        if done:
            order.status = "matched"
        elif tif in ("FOK", "FAK"):
            order.status = "canceled"
        else:
            order.status = "live"
            if side == "BUY":
                order.reserved_cash = reservation_of(price, remaining, rate, exponent)
                acc.reserved += order.reserved_cash
            else:
                assert pos is not None
                order.reserved_shares = remaining
                pos.reserved += remaining
        return {"order": order, "fills": len(takes)}

    # --- rules: orders -----------------------------------------------------------------------
    # Placement is most of what traders do: five rules (Hypothesis picks rules uniformly).
    @rule(data=st.data(), tif=TIFS, post_only=POST_ONLY)
    def place_limit_buy(self, data: Any, tif: str | None, post_only: bool) -> None:
        self._place(data, "BUY", "limit", tif, post_only)

    @rule(data=st.data(), tif=TIFS, post_only=POST_ONLY)
    def place_limit_sell(self, data: Any, tif: str | None, post_only: bool) -> None:
        self._place(data, "SELL", "limit", tif, post_only)

    @rule(data=st.data(), tif=TIFS, post_only=POST_ONLY)
    def place_market_buy(self, data: Any, tif: str | None, post_only: bool) -> None:
        self._place(data, "BUY", "market", tif, post_only)

    @rule(data=st.data(), tif=TIFS, post_only=POST_ONLY)
    def place_market_sell(self, data: Any, tif: str | None, post_only: bool) -> None:
        self._place(data, "SELL", "market", tif, post_only)

    @rule(data=st.data(), tif=TIFS, post_only=POST_ONLY)
    def place_on_a_fresh_book(self, data: Any, tif: str | None, post_only: bool) -> None:
        """A book update then an order on that token: fills against what was just published."""
        self.book(data, fresh=True)
        side = data.draw(st.sampled_from(["BUY", "SELL"]), label="side")
        otype = data.draw(st.sampled_from(["limit", "market"]), label="type")
        self._place(data, side, otype, tif, post_only, token=self._last_book)

    def _place(
        self,
        data: Any,
        side: str,
        otype: str,
        tif: str | None,
        post_only: bool,
        token: str | None = None,
    ) -> None:
        open_accounts = [a for a in self.accounts if not a.closed]
        any_account = data.draw(st.integers(0, 7), label="any account") == 0
        pool = self.accounts if any_account or not open_accounts else open_accounts
        acc = data.draw(st.sampled_from(pool), label="account")
        open_tokens = [t for m in self.markets if m.status == "open" for t in m.tokens]
        any_token = data.draw(st.integers(0, 7), label="any token") == 0
        tokens = self._all_tokens() if any_token or not open_tokens else open_tokens
        if token is None:
            token = data.draw(st.sampled_from(tokens), label="token")
        held = [
            (a, t, pos.size - pos.reserved)
            for a in self.accounts
            for (t, epoch), pos in a.positions.items()
            if epoch == a.epoch and pos.size - pos.reserved > 0 and not a.closed
        ]
        sell_held = side == "SELL" and held and data.draw(st.integers(0, 5), label="naked") != 0
        if sell_held:  # mostly SELLs of shares the account holds (else INSUFFICIENT_POSITION)
            acc, token, available = data.draw(st.sampled_from(held), label="holding")
        if otype == "market" and tif in ("GTC", "GTD") and data.draw(st.booleans()):
            tif = None  # mostly the valid market TIFs; GTC/GTD stay as VALIDATION_FAILED cases
        market_buy = otype == "market" and side == "BUY"
        odd_quantity = data.draw(st.integers(0, 15), label="odd") == 0
        if market_buy != odd_quantity:
            size, amount = None, _pick(data, AMOUNTS, "amount")
        else:
            size, amount = _pick(data, SIZES, "size"), None
            if sell_held:
                part = data.draw(st.sampled_from(["all", "half", "any"]), label="sell part")
                if part == "all":
                    size = str(available)
                elif part == "half":
                    size = str((available / 2).quantize(CENT, rounding=ROUND_DOWN))
        if otype == "limit" or data.draw(st.integers(0, 3), label="market price") == 0:
            price = _pick(data, PRICES, "price")
        else:
            price = None
        now = timezone.now()
        exp_kind = data.draw(st.sampled_from(["ok"] * 6 + ["soon", "none"]), label="expiration")
        expiration = None
        if tif == "GTD" or data.draw(st.integers(0, 39), label="stray exp") == 0:
            expiration = {
                "ok": now + dt.timedelta(hours=1),
                "soon": now + dt.timedelta(seconds=10),
                "none": None,
            }[exp_kind]
        params = {
            "token_id": token,
            "side": side,
            "type": otype,
            "price": price,
            "size": size,
            "amount": amount,
            "time_in_force": tif,
            "expiration": expiration,
            "post_only": post_only,
            "client_order_id": None,
        }
        if data.draw(st.integers(0, 2), label="client id") == 0:
            self._client_ids += 1
            params["client_order_id"] = f"c{self._client_ids}"
        self._submit(acc, params, now)

    @precondition(lambda self: bool(self.by_client_id))
    @rule(data=st.data())
    def retry_with_client_order_id(self, data: Any) -> None:
        """A client's retries: the same content returns the first result (the order with
        created=False, or its stored rejection again), whatever happened since; different
        content under the same client_order_id is INVALID_ORDER_DUPLICATED. Neither moves
        anything (the invariants check that)."""
        cid = data.draw(st.sampled_from(list(self.by_client_id)), label="client id")
        acc, params, first = self.by_client_id[cid]
        self._beat_live_shards()
        try:
            placed = order_place(account_id=acc.pk, **_wire(params))
        except errors.DomainError as exc:
            assert isinstance(first, str) and exc.code == first, (exc.code, first)
            SEEN.update([f"retry {exc.code}"])
        else:
            assert not isinstance(first, str), (params, first)
            assert (placed.created, placed.order.pk) == (False, first)
            assert len(placed.fills) == self.fills_of[first]
            SEEN.update(["retry replayed"])
        changed = dict(params)
        key = "size" if params["size"] is not None else "amount"
        changed[key] = str(D(params[key]) + 1)
        with pytest.raises(errors.DomainError) as caught:
            order_place(account_id=acc.pk, **_wire(changed))
        assert caught.value.code == "INVALID_ORDER_DUPLICATED"
        SEEN.update(["retry INVALID_ORDER_DUPLICATED"])

    def _submit(self, acc: MAccount, params: dict[str, Any], now: dt.datetime) -> None:
        """Predict with the model, place with the engine, compare."""
        self._beat_live_shards()
        try:
            want: dict[str, Any] | Expected = self._predict(acc, params, now)
        except Expected as exc:
            want = exc
        before = Order.objects.count()
        try:
            placed = order_place(account_id=acc.pk, **_wire(params))
        except errors.DomainError as exc:
            assert isinstance(want, Expected), (exc.code, params, want)
            assert exc.code == want.code, (exc.code, want.code, params)
            SEEN.update([exc.code])
            stored = Order.objects.count() - before
            assert stored == (1 if want.stored else 0), (want.code, stored)
            if want.stored:
                self.rejected += 1
                if params["client_order_id"]:
                    self.by_client_id[params["client_order_id"]] = (acc, dict(params), want.code)
            return
        assert not isinstance(want, Expected), (want.code, params, placed.order.status)
        mo: MOrder = want["order"]
        mo.pk = placed.order.pk
        self.orders[mo.pk] = mo
        self.fills_of[mo.pk] = want["fills"]
        if params["client_order_id"]:
            self.by_client_id[params["client_order_id"]] = (acc, dict(params), mo.pk)
        assert placed.created
        assert placed.order.status == mo.status, (placed.order.status, mo, params)
        assert len(placed.fills) == want["fills"]
        SEEN.update([f"{mo.side} {mo.status}" + (" with fills" if want["fills"] else "")])

    @rule(data=st.data())
    def sell_holding(self, data: Any) -> None:
        """Sell (part of) a holding into the bids: the path that realizes P&L."""
        held = [
            (a, t, pos.size - pos.reserved)
            for a in self.accounts
            for (t, epoch), pos in a.positions.items()
            if epoch == a.epoch and pos.size - pos.reserved >= MIN_SIZE and not a.closed
        ]
        if not held:
            return
        acc, token, available = data.draw(st.sampled_from(held), label="holding")
        half = max(MIN_SIZE, (available / 2).quantize(CENT, rounding=ROUND_DOWN))
        size = data.draw(st.sampled_from([available, half]), label="sell size")
        otype = data.draw(st.sampled_from(["market", "limit"]), label="sell type")
        book = self.books.get(token)
        bid_prices = [str(p) for p, _ in book.bids] if book else []
        price = None
        if otype == "limit":
            price = data.draw(st.sampled_from([*bid_prices, "0.3", "0.7"]), label="sell price")
        tif = data.draw(st.sampled_from([None, "FAK"] + (["GTC"] if otype == "limit" else [])))
        params = {
            "token_id": token,
            "side": "SELL",
            "type": otype,
            "price": price,
            "size": str(size),
            "amount": None,
            "time_in_force": tif,
            "expiration": None,
            "post_only": False,
            "client_order_id": None,
        }
        self._submit(acc, params, timezone.now())

    @precondition(lambda self: bool(self.orders))
    @rule(data=st.data())
    def cancel_one(self, data: Any) -> None:
        pk = data.draw(st.sampled_from(list(self.orders)))
        order = self.orders[pk]
        acc = next(a for a in self.accounts if a.pk == order.account)
        if order.status in ("live", "canceled"):
            order_cancel(account_id=acc.pk, order_id=pk)
            if order.status == "live":
                self._release(acc, order, "canceled")
        else:
            with pytest.raises(errors.DomainError) as caught:
                order_cancel(account_id=acc.pk, order_id=pk)
            assert caught.value.code == "ILLEGAL_TRANSITION"

    @rule(data=st.data())
    def cancel_all(self, data: Any) -> None:
        acc = data.draw(st.sampled_from(self.accounts))
        live = self._live_orders(acc)
        assert order_cancel_account(account_id=acc.pk) == len(live)
        for order in live:
            self._release(acc, order, "canceled")

    @rule(data=st.data())
    def cancel_market(self, data: Any) -> None:
        acc = data.draw(st.sampled_from(self.accounts))
        mm = data.draw(st.sampled_from(self.markets))
        live = self._live_orders(acc, market_id=mm.market.condition_id)
        assert order_cancel_market(account_id=acc.pk, market_id=mm.market.condition_id) == len(live)
        for order in live:
            self._release(acc, order, "canceled")

    @rule()
    def expire(self) -> None:
        later = timezone.now() + dt.timedelta(hours=2)
        due = [o for o in self.orders.values() if o.status == "live" and o.tif == "GTD"]
        assert orders_expire(now=later) == len(due)
        SEEN.update(["expired"] * len(due))
        for order in due:
            acc = next(a for a in self.accounts if a.pk == order.account)
            self._release(acc, order, "expired")

    # --- rules: the feed ---------------------------------------------------------------------
    @rule(data=st.data(), fresh=st.sampled_from([True, True, True, False]))
    def book(self, data: Any, fresh: bool) -> None:
        token = data.draw(st.sampled_from(self._all_tokens()), label="book token")
        old = self.books.get(token)
        if old is not None and data.draw(st.booleans(), label="keep sizes"):
            # Same levels republished: depletion must persist (the feed did not change them).
            bids, asks = old.bids, old.asks
        else:
            prices = data.draw(
                st.lists(st.sampled_from(BOOK_PRICES), min_size=0, max_size=8, unique=True),
                label="levels",
            )
            crossed = data.draw(st.integers(0, 5), label="crossed") == 0
            cut = data.draw(st.integers(0, len(prices)), label="cut")
            sizes = [data.draw(st.sampled_from(LEVEL_SIZES)) for _ in prices]
            if crossed:  # a crossed book inside a trade burst: any prices on both sides
                bid_prices, ask_prices = prices[:cut], prices[cut:]
            else:
                ordered = sorted(prices)
                bid_prices, ask_prices = ordered[:cut], ordered[cut:]
            level = dict(zip(prices, sizes, strict=True))
            bids = sorted(((p, level[p]) for p in bid_prices), reverse=True)
            asks = sorted((p, level[p]) for p in ask_prices)
        # Now and then the live tick changes (tick_size_change): orders follow the book's tick.
        tick = D("0.001") if data.draw(st.integers(0, 4), label="fine tick") == 0 else TICK
        self._publish(token, bids, asks, fresh=fresh, tick=tick)

    def _publish(
        self,
        token: str,
        bids: list[tuple[Decimal, Decimal]],
        asks: list[tuple[Decimal, Decimal]],
        *,
        fresh: bool,
        tick: Decimal = TICK,
    ) -> None:
        publish_book(
            token,
            bids=[(str(p), str(s)) for p, s in bids],
            asks=[(str(p), str(s)) for p, s in asks],
            fresh=fresh,
            tick_size=str(tick),
        )
        # The feed set every level it does not show again at the same size (removed, or
        # changed): their depletion is forgotten, also when a later book re-posts the same size.
        shown = {"bids": dict(bids), "asks": dict(asks)}
        for key, (published, _taken) in list(self.depletion.items()):
            t, side, price = key
            if t == token and shown[side].get(price) != published:
                del self.depletion[key]
        self.books[token] = MBook(bids, asks, fresh, tick)
        self.dead_shards.discard(get_bus().shard_of(token))  # publishing beats the shard
        self._last_book = token

    def _beat_live_shards(self) -> None:
        """The running ingesters beat every second: every shard the model has not killed is
        alive now, however long the steps so far took on a slow or loaded machine (without
        this, a run slower than the stale threshold saw STALE_BOOK the model did not)."""
        bus = get_bus()
        for shard in range(bus.n_shards):
            if shard not in self.dead_shards:
                bus.heartbeat(shard)

    @precondition(lambda self: bool(self.books))
    @rule(data=st.data())
    def feed_dies(self, data: Any) -> None:
        token = data.draw(st.sampled_from(sorted(self.books)))
        bus = get_bus()
        shard = bus.shard_of(token)
        bus.heartbeat(shard, at_ms=now_ms() - 3_600_000)
        self.dead_shards.add(shard)

    # --- rules: lifecycle --------------------------------------------------------------------
    @rule(
        data=st.data(),
        verdict=st.sampled_from(["winner", "loser", "void", "ambiguous", "closed_pending"]),
    )
    def resolve(self, data: Any, verdict: str) -> None:
        candidates = [m for m in self.markets if m.status in ("open", "closed", "ambiguous")]
        if not candidates:
            return
        mm = data.draw(st.sampled_from(candidates))
        yes, no = mm.tokens
        m = mm.market
        if mm.status == "ambiguous":
            # Only an operator moves an ambiguous market on.
            if verdict in ("ambiguous", "closed_pending"):
                return
            state = rs.VOID if verdict == "void" else rs.RESOLVED
            winner = {"winner": yes, "loser": no}.get(verdict)
            resolution: Any = market_resolve_manually(
                market=m, state=state, winning_token_id=winner
            )
        else:
            state = {
                "winner": rs.RESOLVED,
                "loser": rs.RESOLVED,
                "void": rs.VOID,
                "ambiguous": rs.AMBIGUOUS,
                "closed_pending": rs.CLOSED_PENDING,
            }[verdict]
            winner = {"winner": yes, "loser": no}.get(verdict)
            resolution = market_apply_verdict(
                market=m,
                verdict=rs.ResolutionVerdict(state, m.condition_id, (yes, no), winner),
                source="clob",
            )
        if state == rs.CLOSED_PENDING:
            mm.status = "closed"
            assert resolution is None
            return
        assert resolution is not None
        mm.status = state
        result = market_settle(resolution_id=resolution.pk)
        if state == rs.AMBIGUOUS:
            assert not result.settleable
            SEEN.update(["ambiguous"])
            return
        payouts = {yes: ONE, no: ZERO} if state == rs.RESOLVED else {yes: D("0.5"), no: D("0.5")}
        if verdict == "loser":
            payouts = {yes: ZERO, no: ONE}
        self._settle_model(mm, payouts, result)
        SEEN.update([f"settled {verdict}" + (" paying positions" if result.positions else "")])
        mm.settled = True
        # A second run (another source, the sweep) pays nothing twice.
        again = market_settle(resolution_id=resolution.pk)
        assert (again.positions, again.paid, again.orders_cancelled) == (0, ZERO, 0)
        if len([x for x in self.markets if x.status == "open"]) < 2:
            self._new_market(rate=D("0.03") if len(self.markets) % 2 else ZERO, exponent=2)

    def _settle_model(self, mm: MMarket, payouts: dict[str, Decimal], result: Any) -> None:
        positions = cancelled = 0
        paid = ZERO
        for acc in self.accounts:
            if acc.closed:
                continue
            for order in self._live_orders(acc, market_id=mm.market.condition_id):
                self._release(acc, order, "canceled")
                cancelled += 1
            for (token, epoch), pos in list(acc.positions.items()):
                if token not in payouts:
                    continue
                if pos.size > 0:
                    payout = cash_q(pos.size * payouts[token])
                    realized = payout - pos.cost
                    acc.cash += payout
                    acc.realized += realized
                    paid += payout
                    positions += 1
                del acc.positions[(token, epoch)]
        assert (result.positions, result.paid, result.orders_cancelled) == (
            positions,
            paid,
            cancelled,
        )

    @rule(data=st.data())
    def reset(self, data: Any) -> None:
        acc = data.draw(st.sampled_from(self.accounts))
        account = Account.objects.get(pk=acc.pk)
        if acc.closed:
            with pytest.raises(errors.DomainError) as caught:
                account_reset(account=account)
            assert caught.value.code == "ACCOUNT_CLOSED"
            return
        account_reset(account=account)
        for order in self._live_orders(acc):
            self._release(acc, order, "canceled")
        acc.positions = {}  # closed_by_reset: history, no cash effect
        acc.epoch += 1
        acc.cash, acc.realized, acc.fees = STARTING, ZERO, ZERO

    @precondition(lambda self: sum(not a.closed for a in self.accounts) >= 2)
    @rule(data=st.data())
    def close(self, data: Any) -> None:
        if data.draw(st.integers(0, 1), label="close now") != 0:
            return  # closed accounts only refuse: keep most of them trading
        acc = data.draw(st.sampled_from(self.accounts))
        account_close(account=Account.objects.get(pk=acc.pk))
        for order in self._live_orders(acc):
            self._release(acc, order, "canceled")
        acc.closed = True
        # A closed account is sealed: the next order is refused before anything happens.
        params = {
            "token_id": self._all_tokens()[0],
            "side": "BUY",
            "type": "limit",
            "price": "0.5",
            "size": "10",
            "amount": None,
            "time_in_force": None,
            "expiration": None,
            "post_only": False,
            "client_order_id": None,
        }
        self._submit(acc, params, timezone.now())

    @precondition(lambda self: len(self.accounts) < 4)
    @rule()
    def new_account(self) -> None:
        self._new_account()

    # --- the checks after every step ---------------------------------------------------------
    @invariant()
    def audit_is_clean(self) -> None:
        violations = ledger_audit()
        assert violations == [], [str(v) for v in violations]

    @invariant()
    def accounts_match_the_model(self) -> None:
        for acc in self.accounts:
            a = Account.objects.get(pk=acc.pk)
            got = (a.cash, a.reserved_cash, a.realized_pnl, a.fees_paid, a.epoch, a.is_closed)
            want = (acc.cash, acc.reserved, acc.realized, acc.fees, acc.epoch, acc.closed)
            assert got == want, (got, want)
            rows = {
                (p.token_id, p.epoch): (p.size, p.reserved_size, p.cost_basis, p.realized_pnl)
                for p in Position.objects.filter(account_id=acc.pk, status=Position.Status.OPEN)
            }
            model = {k: (v.size, v.reserved, v.cost, v.realized) for k, v in acc.positions.items()}
            assert rows == model, (rows, model)

    @invariant()
    def orders_match_the_model(self) -> None:
        rows = {
            o.pk: (o.status, o.filled_size, o.reserved_cash, o.reserved_shares)
            for o in Order.objects.exclude(status=Order.Status.REJECTED)
        }
        model = {
            pk: (o.status, o.filled, o.reserved_cash, o.reserved_shares)
            for pk, o in self.orders.items()
        }
        assert rows == model
        assert Order.objects.filter(status=Order.Status.REJECTED).count() == self.rejected


def test_engine_matches_the_reference_model() -> None:
    SEEN.clear()
    run_state_machine_as_test(
        EngineMachine,
        settings=settings(
            max_examples=25,
            stateful_step_count=50,
            derandomize=True,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            print_blob=True,
        ),
    )
    for outcome in (
        "BUY matched with fills",
        "SELL matched with fills",
        "BUY live",
        "SELL live",
        "BUY canceled",
        "INVALID_ORDER_NOT_ENOUGH_BALANCE",
        "INSUFFICIENT_POSITION",
        "FOK_ORDER_NOT_FILLED_ERROR",
        "STALE_BOOK",
        "MARKET_CLOSED",
        "ACCOUNT_CLOSED",
        "INVALID_ORDER_MIN_TICK_SIZE",
        "INVALID_ORDER_MIN_SIZE",
        "VALIDATION_FAILED",
        "retry INVALID_ORDER_DUPLICATED",
        "ambiguous",
    ):
        assert SEEN[outcome] > 0, (outcome, sorted(SEEN.items()))
    # A same-content retry returned the first result: the order again, or its stored rejection.
    assert any(k.startswith("retry ") and "DUPLICATED" not in k for k in SEEN), SEEN
    assert any(k.startswith("settled") and k.endswith("paying positions") for k in SEEN), SEEN
