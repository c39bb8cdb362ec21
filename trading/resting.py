"""The matcher's index of resting orders: by token, side and price, in price-time priority,
answering "which orders does this top cross?" in time proportional to the answer
(docs/fill-model.md "Maker fills"). Kept by one matcher thread (trading.matcher)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from decimal import Decimal

from trading.models import Side
from trading.orderevents import OrderEvent


@dataclass(slots=True)
class Resting:
    order_id: str
    account_id: str
    token_id: str
    side: str
    price: Decimal
    remaining: Decimal
    created_ms: int
    queue_ahead: Decimal

    @property
    def priority(self) -> tuple[int, str]:
        return (self.created_ms, self.order_id)


@dataclass(slots=True)
class _Side:
    prices: list[Decimal] = field(default_factory=list)  # ascending
    buckets: dict[Decimal, list[Resting]] = field(default_factory=dict)  # time order


class RestingIndex:
    """Resting orders by token, side and price. Not thread-safe: one matcher thread owns it."""

    def __init__(self) -> None:
        self._tokens: dict[str, dict[str, _Side]] = {}
        self._by_id: dict[str, Resting] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, order_id: str) -> Resting | None:
        return self._by_id.get(order_id)

    def upsert(self, r: Resting) -> None:
        old = self._by_id.get(r.order_id)
        if old is not None:
            if old.price == r.price and old.side == r.side and old.token_id == r.token_id:
                old.remaining, old.queue_ahead = r.remaining, r.queue_ahead
                return
            self.remove(r.order_id)
        self._by_id[r.order_id] = r
        side = self._tokens.setdefault(r.token_id, {}).setdefault(r.side, _Side())
        bucket = side.buckets.get(r.price)
        if bucket is None:
            bisect.insort(side.prices, r.price)
            side.buckets[r.price] = [r]
        else:
            keys = [o.priority for o in bucket]
            bucket.insert(bisect.bisect(keys, r.priority), r)

    def remove(self, order_id: str) -> None:
        r = self._by_id.pop(order_id, None)
        if r is None:
            return
        sides = self._tokens[r.token_id]
        side = sides[r.side]
        bucket = side.buckets[r.price]
        bucket.remove(r)
        if not bucket:
            del side.buckets[r.price]
            del side.prices[bisect.bisect_left(side.prices, r.price)]
            if not side.prices:
                del sides[r.side]
                if not sides:
                    del self._tokens[r.token_id]

    def crossing(self, token_id: str, side: str, price: Decimal) -> list[Resting]:
        """Orders of `side` that a counter-price `price` reaches or passes (BUY: limit ≥
        price; SELL: limit ≤ price), best price first, then oldest first."""
        book = self._tokens.get(token_id)
        s = book.get(side) if book else None
        if s is None:
            return []
        out: list[Resting] = []
        if side == Side.BUY:
            for p in reversed(s.prices[bisect.bisect_left(s.prices, price) :]):
                out.extend(s.buckets[p])
        else:
            for p in s.prices[: bisect.bisect_right(s.prices, price)]:
                out.extend(s.buckets[p])
        return out

    def reaches(self, token_id: str, best_bid: Decimal | None, best_ask: Decimal | None) -> bool:
        """Whether a top with these bests crosses any order of the token (`crossing` would
        return something for one side): the ask at or below the highest BUY, or the bid at
        or above the lowest SELL. Two lookups, whatever the number of orders."""
        book = self._tokens.get(token_id)
        if book is None:
            return False
        buys, sells = book.get(Side.BUY), book.get(Side.SELL)
        return (best_ask is not None and buys is not None and best_ask <= buys.prices[-1]) or (
            best_bid is not None and sells is not None and best_bid >= sells.prices[0]
        )

    def token_ids(self) -> set[str]:
        return set(self._tokens)

    def has_token(self, token_id: str) -> bool:
        return token_id in self._tokens


def resting_from_event(e: OrderEvent) -> Resting:
    return Resting(
        e.order_id,
        e.account_id,
        e.token_id,
        e.side,
        Decimal(e.price),
        Decimal(e.remaining),
        e.created_ms,
        Decimal(e.queue_ahead),
    )
