"""Engine test fixtures: markets and tokens as rows, books PUBLISHED on the real price bus
(the interface the feed uses), funded accounts through the wallet services.

Like the real feed, the fixtures keep every shard's heartbeat beating: each test starts with
a fresh heartbeat on all shards and every published book beats its shard again, so a book
is live unless a test makes it stale (`mark_stale`) or its feed dead (`feed_dead`)."""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from marketdata.book import OrderBook
from marketdata.bus import BookTop, TradePrint, get_bus, now_ms, reset_bus
from marketdata.models import Market, Token
from trading.depletion import reset_depletion
from trading.orderevents import reset_order_events

_ids = itertools.count(1)
# The books `publish_book` keeps per token, as the feed does: republishing a level unchanged
# keeps its version (and the depletion memory of it), a changed or re-posted level gets a
# new one (marketdata/book.py, "Level versions").
_books: dict[str, OrderBook] = {}


@pytest.fixture(autouse=True)
def _fresh_engine_state(_fresh_process_state: None) -> Iterator[None]:
    # After the suite's own state fixture, which emptied the test Redis: fresh clients, and
    # the heartbeat below lands on the bus the engine will read.
    reset_bus()
    reset_depletion()
    reset_order_events()
    _books.clear()
    feed_alive()
    yield
    reset_bus()
    reset_depletion()
    reset_order_events()
    _books.clear()


def feed_alive() -> None:
    """Every shard's feed heartbeat, now (what the running ingesters do every second)."""
    bus = get_bus()
    for shard in range(bus.n_shards):
        bus.heartbeat(shard)


@contextlib.contextmanager
def feed_beating(every: float = 0.5) -> Iterator[None]:
    """Keep every shard's heartbeat beating while the block runs, as the running ingesters
    do: a test that takes longer than PRICE_BUS_HEARTBEAT_STALE_SECONDS of wall time (a
    slow, loaded machine) must not see its books go stale half way through."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            feed_alive()

    thread = threading.Thread(target=beat, name="test-feed-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def feed_dead(token_id: str, *, seconds_ago: float = 3600) -> None:
    """The feed of this token's shard last beat `seconds_ago`: it died or hung."""
    bus = get_bus()
    bus.heartbeat(bus.shard_of(token_id), at_ms=now_ms() - int(seconds_ago * 1000))


def make_market(**overrides: Any) -> tuple[Market, Token, Token]:
    n = next(_ids)
    fields: dict[str, Any] = {
        "condition_id": f"0xcond{n:04d}",
        "question": f"Will test market {n} resolve Yes?",
        "tick_size": Decimal("0.01"),
        "min_order_size": Decimal("5"),
        "accepting_orders": True,
        "closed": False,
    }
    fields.update(overrides)
    market = Market.objects.create(**fields)
    yes = Token.objects.create(market=market, token_id=f"{n}0001", outcome="Yes", index=0)
    no = Token.objects.create(market=market, token_id=f"{n}0002", outcome="No", index=1)
    return market, yes, no


def publish_book(
    token_id: str,
    *,
    bids: list[tuple[str, str]] = (),  # type: ignore[assignment]
    asks: list[tuple[str, str]] = (),  # type: ignore[assignment]
    market: str = "0xcond",
    tick_size: str = "0.01",
    timestamp: str = "1786604072222",
    hash: str = "testhash",
    fresh: bool = True,
) -> BookTop:
    """Install a snapshot in the token's real OrderBook (kept between calls, as the feed keeps
    it) and publish its top on the process bus."""
    msg = {
        "market": market,
        "asset_id": token_id,
        "timestamp": timestamp,
        "hash": hash,
        "bids": [{"price": p, "size": s} for p, s in bids],
        "asks": [{"price": p, "size": s} for p, s in asks],
        "tick_size": tick_size,
    }
    book = _books.get(token_id)
    if book is None or book.market != market:
        book = _books[token_id] = OrderBook.from_snapshot(msg)
    else:
        book.replace_from_snapshot(msg)
    top = BookTop.from_book(book, fresh=fresh)
    bus = get_bus()
    bus.publish([top])
    bus.heartbeat(bus.shard_of(token_id))
    return top


def publish_trade(
    token_id: str, *, price: str, size: str, side: str | None = "SELL", timestamp_ms: int = 0
) -> TradePrint:
    """A `last_trade_price` print on the process bus, as the feed publishes it (`side` is the
    taker's: SELL hit bids, BUY lifted asks)."""
    trade = TradePrint(token_id, price, size, side, timestamp_ms or now_ms(), now_ms())
    bus = get_bus()
    bus.publish_json([], [(token_id, trade.to_json())])
    bus.heartbeat(bus.shard_of(token_id))
    return trade


def publish_snapshot(msg: dict[str, Any], *, token_id: str | None = None) -> BookTop:
    """Publish a recorded snapshot (optionally re-keyed to one of our tokens)."""
    msg = dict(msg)
    if token_id is not None:
        msg["asset_id"] = token_id
    top = BookTop.from_book(OrderBook.from_snapshot(msg))
    bus = get_bus()
    bus.publish([top])
    bus.heartbeat(bus.shard_of(top.token_id))
    return top


def open_account(balance: str = "1000", tenant: Any = None) -> Any:
    from accounts.services.wallets import account_open
    from tests.factories import UserFactory

    return account_open(
        owner=UserFactory(),
        tenant=tenant,
        external_id=None if tenant is None else f"ext-{next(_ids)}",
        stage=None if tenant is None else "challenge",
        starting_balance=Decimal(balance),
    )


def audit_clean(account: Any = None) -> None:
    from trading.audit import ledger_audit

    violations = ledger_audit(account_id=None if account is None else account.pk)
    assert violations == [], [str(v) for v in violations]
