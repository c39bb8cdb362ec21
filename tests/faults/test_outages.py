"""The stack heals itself (issue #11; docs/operations.md "When PostgreSQL or Redis is down"):
real web and matcher processes on a private PostgreSQL and Redis, which these tests stop and
restart under a stream of orders.

For every scenario: no client-visible 500 (only 2xx, 4xx and 503 with the envelope), success
again within 10 s of the service's return, every accepted order stored exactly once (retries
with the same client_order_id return the same order), no fill on a book that was no longer
current, and a clean ledger audit. Measured recovery times are printed (run with -s)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.faults.conftest import FakeFeed, Stack, wait_for

RECOVERY_SECONDS = 10.0
# How long each outage lasts at least: long enough for many 503s and several of the matcher's
# backoff retries, short enough to keep the module within a minute.
OUTAGE_SECONDS = 2.0
pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class Answer:
    coid: str
    status: int  # 0: no HTTP answer at all (a transport error)
    order_id: str | None
    code: str | None
    at: float  # time.monotonic() when it came back


def order_body(stack: Stack, coid: str, n: int) -> dict[str, Any]:
    """Even n: a limit BUY that rests (below any bid the tests publish); odd n: a market BUY
    of 5 USDC, which takes the ask."""
    body: dict[str, Any] = {
        "account_id": stack.seed["account_id"],
        "token_id": stack.seed["tokens"][0],
        "side": "BUY",
        "client_order_id": coid,
    }
    if n % 2 == 0:
        return {**body, "type": "limit", "price": "0.30", "size": "5"}
    return {**body, "type": "market", "amount": "5", "time_in_force": "FAK"}


def send(client: httpx.Client, body: dict[str, Any]) -> Answer:
    try:
        response = client.post("/v1/orders", json=body)
    except httpx.TransportError:
        return Answer(body["client_order_id"], 0, None, None, time.monotonic())
    data = (
        response.json()
        if response.headers.get("content-type", "").startswith("application/json")
        else {}
    )
    if response.status_code == 503:  # the outage's answer: the envelope, with a retry hint
        assert response.headers["X-Error-Code"] == data["error"]
        assert int(response.headers["Retry-After"]) > 0
    order_id = data.get("id") if response.status_code in (200, 201) else None
    return Answer(
        body["client_order_id"], response.status_code, order_id, data.get("error"), time.monotonic()
    )


class OrderPump:
    """Sends orders one after another, each with a new client_order_id, recording every
    answer; `settle` then retries each order whose answer was not final (503 or no answer)
    with the same body until it is, as a careful client does."""

    def __init__(self, stack: Stack, prefix: str) -> None:
        self.stack, self.prefix = stack, prefix
        self.answers: list[Answer] = []
        self.bodies: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> OrderPump:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with self.stack.trader() as client:
            n = 0
            while not self._stop.is_set():
                coid = f"{self.prefix}-{n}"
                self.bodies[coid] = order_body(self.stack, coid, n)
                self.answers.append(send(client, self.bodies[coid]))
                n += 1
                self._stop.wait(0.05)

    def since(self, status: int, t: float) -> list[Answer]:
        return [a for a in list(self.answers) if a.status == status and a.at >= t]

    def settle(self) -> None:
        final = {a.coid: a for a in self.answers}
        with self.stack.trader() as client:
            for coid, answer in final.items():
                deadline = time.monotonic() + RECOVERY_SECONDS
                while answer.status in (0, 503):
                    assert time.monotonic() < deadline, f"{coid}: still {answer.status}"
                    answer = send(client, self.bodies[coid])
                    self.answers.append(answer)


def hold_down(down: float) -> None:
    """Keep the service down until OUTAGE_SECONDS after it went (a fixed outage, not a wait
    for something to happen)."""
    time.sleep(max(0.0, down + OUTAGE_SECONDS - time.monotonic()))


def check_orders(stack: Stack, pump: OrderPump, prefix: str) -> dict[str, int]:
    """No 500 and no unanswered request; every order a 2xx named exists exactly once, with
    the id every 2xx for its client_order_id gave; no order exists that no 2xx named; and a
    retry of an accepted order returns that order (200), not a new one."""
    with stack.trader() as client:
        for a in [a for a in pump.answers if a.status == 201][:3]:
            replay = send(client, pump.bodies[a.coid])
            assert (replay.status, replay.order_id) == (200, a.order_id), replay
            pump.answers.append(replay)
    answers = pump.answers
    statuses = [a.status for a in answers]
    assert all(s in (200, 201, 503) or 400 <= s < 500 for s in statuses), sorted(set(statuses))
    ids: dict[str, set[str]] = {}
    for a in answers:
        if a.status in (200, 201):
            ids.setdefault(a.coid, set()).add(str(a.order_id))
    assert all(len(v) == 1 for v in ids.values()), {k: v for k, v in ids.items() if len(v) > 1}
    stored = stack.sql(
        "SELECT client_order_id, id::text FROM trading_order WHERE client_order_id LIKE %s",
        (f"{prefix}-%",),
    )
    assert {coid: {oid} for coid, oid in stored} == ids
    return {str(s): statuses.count(s) for s in sorted(set(statuses))}


def stale_fills(stack: Stack, book_hash: str, wall_since: float) -> int:
    """Fills that used the book `book_hash` although a newer one had replaced it by then."""
    return int(
        stack.sql(
            "SELECT count(*) FROM trading_fill WHERE book_hash = %s "
            "AND filled_at >= to_timestamp(%s)",
            (book_hash, wall_since),
        )[0][0]
    )


def place(stack: Stack, body: dict[str, Any], *, within: float = RECOVERY_SECONDS) -> Answer:
    """POST an order, retrying the same body while the stack answers 503 or MARKET_NOT_READY
    (a Redis that came back empty has no book until the feed republishes it)."""
    with stack.trader() as client:

        def answered() -> Answer | None:
            a = send(client, body)
            assert a.status in (0, 200, 201, 503, 422), a
            done = a.status in (200, 201) or (a.status == 422 and a.code != "MARKET_NOT_READY")
            return a if done else None

        return wait_for(answered, f"order {body['client_order_id']} accepted", within)  # type: ignore[no-any-return]


def order_row(stack: Stack, order_id: str) -> tuple[str, Decimal]:
    status, filled = stack.sql(
        "SELECT status, filled_size FROM trading_order WHERE id = %s", (order_id,)
    )[0]
    return str(status), Decimal(filled)


def fill_prices(stack: Stack, order_id: str) -> list[tuple[Decimal, str]]:
    rows = stack.sql("SELECT price, book_hash FROM trading_fill WHERE order_id = %s", (order_id,))
    return [(Decimal(p), str(h)) for p, h in rows]


def test_redis_down_under_orders_is_503_then_orders_succeed_within_10_s(stack: Stack) -> None:
    yes = stack.seed["tokens"][0]
    book = stack.feed.set_book(yes, bids=[("0.45", "100000")], asks=[("0.55", "100000")])  # type: ignore[union-attr]
    account = stack.seed["account_id"]
    with OrderPump(stack, "a") as pump:
        wait_for(lambda: len(pump.since(201, 0)) >= 4, "orders before the outage", 30)
        wall_down = time.time()
        stack.redis.stop()  # no save: it comes back empty
        down = time.monotonic()
        # A new version of the same prices: from here on `book` is no longer current.
        stack.feed.set_book(yes, bids=[("0.45", "100000")], asks=[("0.55", "100000")])  # type: ignore[union-attr]
        wait_for(lambda: len(pump.since(503, down)) >= 3, "503s while Redis is down", 10)
        with stack.trader() as trader, stack.partner() as partner:
            # Needs Redis: the book, the quotes, the marks of an account with positions.
            for response in (
                trader.get("/v1/markets"),
                partner.get(f"/v1/partner/accounts/{account}"),
            ):
                assert response.status_code == 503, response.text
                assert response.json()["error"] == "SERVICE_UNAVAILABLE"
                assert response.json()["details"] == {"service": "redis"}
            page = trader.get("/markets/")
            assert page.status_code == 503 and "text/html" in page.headers["content-type"]
            # Needs only PostgreSQL (the rate limiter fails open): keeps working.
            assert trader.get("/v1/orders", params={"account_id": account}).status_code == 200
            assert partner.get("/v1/partner/whoami").status_code == 200
        hold_down(down)
        stack.redis.start()
        back = time.monotonic()
        first = wait_for(
            lambda: pump.since(201, back),
            "an order accepted after Redis returned",
            RECOVERY_SECONDS,
        )
        wait_for(lambda: len(pump.since(201, back)) >= 4, "orders flowing again", RECOVERY_SECONDS)
    pump.settle()
    counts = check_orders(stack, pump, "a")
    stack.alive()
    assert stale_fills(stack, book, wall_down) == 0
    stack.audit()
    print(f"\nRedis down under orders: answers {counts}; outage {back - down:.1f} s; "
          f"first 201 {first[0].at - back:.2f} s after Redis returned")  # fmt: skip


@pytest.mark.parametrize("restart", ["empty", "dump"])
def test_redis_back_empty_or_from_dump_fills_a_crossed_order_within_10_s(
    stack: Stack, restart: str
) -> None:
    yes = stack.seed["tokens"][0]
    feed = stack.feed
    assert feed is not None
    before = feed.set_book(yes, bids=[("0.45", "100000")], asks=[("0.55", "100000")])
    resting = place(
        stack, {**order_body(stack, f"b-{restart}-rest", 0), "price": "0.50", "size": "10"}
    )
    assert resting.status == 201 and resting.order_id
    assert order_row(stack, resting.order_id) == ("live", Decimal("0"))

    wall_down = time.time()
    stack.redis.stop(save=restart == "dump")
    down = time.monotonic()
    # The exchange moves while Redis is down: the ask comes down through the resting BUY.
    # The feed publishes this book when Redis is back; a dump brings `before` back meanwhile.
    crossing = feed.set_book(yes, bids=[("0.40", "100000")], asks=[("0.48", "100000")])
    wait_for(
        lambda: stack.matcher_state().get("state", "").startswith("waiting for redis"),
        "the matcher noticing",
        10,
    )
    hold_down(down)
    stack.redis.start()
    back = time.monotonic()
    published = wait_for(
        lambda: feed.published.get(crossing), "the crossing book republished", RECOVERY_SECONDS
    )

    def filled() -> float | None:
        return time.monotonic() if order_row(stack, str(resting.order_id))[1] > 0 else None

    filled_at = wait_for(filled, "the crossed resting order filled", RECOVERY_SECONDS)
    assert fill_prices(stack, str(resting.order_id)) == [
        (Decimal("0.50"), crossing)
    ]  # maker, at its limit
    market = place(stack, order_body(stack, f"b-{restart}-market", 1))
    assert market.status == 201
    assert {p for p, _ in fill_prices(stack, str(market.order_id))} == {Decimal("0.48")}
    assert stale_fills(stack, before, wall_down) == 0
    wait_for(lambda: stack.matcher_state()["state"] == "running", "the matcher running", 5)
    stack.alive()
    stack.audit()
    print(f"\nRedis back {restart}: book republished {published - back:.2f} s after its return; "
          f"crossed order filled {filled_at - published:.2f} s after the book")  # fmt: skip


def test_postgres_restart_under_orders_is_503_then_recovers_within_10_s(stack: Stack) -> None:
    yes = stack.seed["tokens"][0]
    feed = stack.feed
    assert feed is not None
    before = feed.set_book(yes, bids=[("0.45", "100000")], asks=[("0.55", "100000")])
    resting = place(stack, {**order_body(stack, "rest-c", 0), "price": "0.50", "size": "10"})
    assert resting.status == 201
    with OrderPump(stack, "c") as pump:
        wait_for(lambda: len(pump.since(201, 0)) >= 4, "orders before the outage", 30)
        wall_down = time.time()
        stack.pg.stop(mode="immediate")  # a crash: no checkpoint, connections cut
        down = time.monotonic()
        # The book crosses the resting order while PostgreSQL is down: the matcher sees it
        # and cannot fill; it must fill once PostgreSQL is back.
        crossing = feed.set_book(yes, bids=[("0.40", "100000")], asks=[("0.48", "100000")])
        wait_for(lambda: len(pump.since(503, down)) >= 3, "503s while PostgreSQL is down", 10)
        with stack.trader() as trader:
            api = trader.get("/v1/markets")
            assert api.status_code == 503, api.text
            assert api.json()["details"] == {"service": "postgresql"}
            page = trader.get("/markets/")
            assert page.status_code == 503 and "text/html" in page.headers["content-type"]
        wait_for(
            lambda: stack.matcher_state().get("state") == "waiting for postgresql",
            "the matcher noticing",
            10,
        )
        hold_down(down)
        stack.pg.start()
        back = time.monotonic()
        first = wait_for(
            lambda: pump.since(201, back),
            "an order accepted after PostgreSQL returned",
            RECOVERY_SECONDS,
        )

        def filled() -> float | None:
            return time.monotonic() if order_row(stack, str(resting.order_id))[1] > 0 else None

        filled_at = wait_for(filled, "the crossed resting order filled", RECOVERY_SECONDS)
    pump.settle()
    counts = check_orders(stack, pump, "c")
    assert fill_prices(stack, str(resting.order_id))[0][0] == Decimal("0.50")
    assert stale_fills(stack, before, wall_down) == 0
    stack.alive()
    stack.audit()
    print(f"\nPostgreSQL restart under orders: answers {counts}; outage {back - down:.1f} s; "
          f"first 201 {first[0].at - back:.2f} s, crossed order filled {filled_at - back:.2f} s "
          f"after PostgreSQL returned; crossing book {crossing}")  # fmt: skip


def test_a_dead_feed_takes_no_taker_fill_after_2_s_then_trading_resumes(stack: Stack) -> None:
    """The feed stops beating (its process died): within PRICE_BUS_HEARTBEAT_STALE_SECONDS (2 s
    by default) every taker order is refused (503 STALE_BOOK) and nothing fills on the book it
    left; a new feed makes orders fill again at once."""
    yes = stack.seed["tokens"][0]
    feed = stack.feed
    assert feed is not None
    left = feed.set_book(yes, bids=[("0.45", "100000")], asks=[("0.55", "100000")])
    with OrderPump(stack, "d") as pump:
        wait_for(lambda: len(pump.since(201, 0)) >= 4, "orders before the feed dies", 30)
        feed.stop()  # no more beats, no more books: as if its process was killed
        died = time.monotonic()
        wall_deadline = time.time() + 2.0
        wait_for(
            lambda: [a for a in pump.since(503, died) if a.code == "STALE_BOOK"],
            "STALE_BOOK after the feed died",
            10,
        )
        time.sleep(1.0)  # more orders meet the dead feed
        stack.feed = FakeFeed(stack.redis.url(0))
        revived = time.monotonic()
        stack.feed.set_book(yes, bids=[("0.45", "100000")], asks=[("0.55", "100000")])

        def market(a: Answer) -> bool:
            return bool(pump.bodies[a.coid]["type"] == "market")

        wait_for(
            lambda: [a for a in pump.since(201, revived) if market(a)],
            "a market order filled on the new feed",
            RECOVERY_SECONDS,
        )
    dead = [a for a in pump.answers if died + 2.0 <= a.at < revived and market(a)]
    assert dead and {(a.status, a.code) for a in dead} == {(503, "STALE_BOOK")}
    counts = check_orders(stack, pump, "d")
    taken_late = stack.sql(
        "SELECT count(*) FROM trading_fill WHERE book_hash = %s AND filled_at >= to_timestamp(%s)",
        (left, wall_deadline),
    )[0][0]
    assert taken_late == 0
    stack.alive()
    stack.audit()
    print(f"\nFeed dead under orders: answers {counts}")
