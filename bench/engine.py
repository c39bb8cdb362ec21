#!/usr/bin/env python
"""Trading engine benchmark (issue #4).

Part (a), placement (this file): POST /v1/orders — market BUYs (FOK, by `amount`) that fill as
taker against fresh books published on the RedisBus — under gunicorn on PostgreSQL + Redis
with production settings, across many accounts and on a single account (every order of that
one takes the same account row lock), against the bare Django view of bench/urls_bench.py,
all measured in the same run on the same machine. The ledger audit runs over the whole
database at the end, and the orders the database holds are checked against the 201s the load
generator counted (exactly once).

Part (b), the maker matcher, lives in `bench/engine_matching.py` (another issue's work); with
`--part matching` or `--part all` this script runs its `main(argv)` when that module exists.

Usage:
    make bench                                   # every benchmark, this one with defaults
    .venv/bin/python bench/engine.py --quick     # smoke run, docs untouched
    .venv/bin/python bench/engine.py --db polysim_engine_bench --redis redis://127.0.0.1:6379/10
    .venv/bin/python bench/engine.py --help

Needs PostgreSQL (user postgres, trust auth) and Redis on 127.0.0.1. The script drops and
recreates the database `--db`, flushes the Redis DB of `--redis`, starts its own gunicorn on
127.0.0.1 (`--port`, default a free one) and always stops it.

What it does:
  1. fresh database, `migrate`, seed: one trader with a personal trader key (tk_…) and N
     accounts (a firm's accounts for that trader, 1,000,000 each), M markets (half with taker
     fees), one YES token each;
  2. a publisher thread: every PUBLISH_EVERY_S, every token's book republished fresh on the
     RedisBus (asks at 0.50 and 0.51 with sizes that change each time, as a live feed's do,
     so depletion memories reset) and every shard's feed heartbeat — as the feed process does;
  3. an in-process census: SQL statements per order (CaptureQueriesContext);
  4. gunicorn `config.wsgi:application` with DJANGO_SETTINGS_MODULE=bench.settings_bench,
     the trader rate limit raised above the load (RATE_LIMIT_DEFAULT_PER_SECOND/MINUTE) so the
     limiter takes its real Redis path but never rejects;
  5. per endpoint: warm-up, closed-loop throughput in interleaved rounds, then open-loop
     latency at the goal rate (send times fixed in advance, no coordinated omission);
  6. the ledger audit and the exactly-once check; a table on stdout and, unless
     --no-write/--quick, the docs section.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import itertools
import json
import math
import os
import re
import secrets
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import DOCS, write_docs_section  # noqa: E402
from bench.partner_api import (  # noqa: E402
    Endpoint,
    RawClient,
    Tally,
    _fmt,
    closed_rounds,
    django_setup,
    error_lines,
    free_port,
    machine_info,
    migrate,
    open_loop,
    start_gunicorn,
    stop_gunicorn,
    wait_quiet,
    wait_ready,
)

SECTION_TITLE = "## Trading engine: order placement (issue #4)"
DEFAULT_DB = "polysim_bench_engine"
DEFAULT_REDIS = "redis://127.0.0.1:6379/10"

GOAL_MANY_PER_S = 200.0  # market orders/s across accounts
GOAL_ONE_PER_S = 50.0  # market orders/s on a single account
REFERENCE_ONE_PER_S = "3–4"  # what the reference engine serialises per account (issue #4)
PUBLISH_EVERY_S = 0.5
ORDER_AMOUNT = "2"  # dollars per market BUY: 4 shares at 0.50
STARTING_BALANCE = Decimal("1000000")


# --- seed ---------------------------------------------------------------------------------------
@dataclass
class Seed:
    raw_key: str
    account_ids: list[str]
    tokens: list[str]
    markets: list[str]


def seed_data(n_accounts: int, n_markets: int) -> Seed:
    from django.db import connection, transaction

    from accounts.services import trader_key_create
    from accounts.services.wallets import account_open, user_ensure
    from marketdata.models import Market, Token
    from partners import services

    with transaction.atomic():
        tenant = services.tenant_create(slug="bench", name="Benchmark firm")
        user = user_ensure(email="bench-trader@example.com")
        _, raw_key = trader_key_create(user=user, name="bench")
        account_ids = [
            str(
                account_open(
                    owner=user,
                    tenant=tenant,
                    external_id=f"bench-{i}",
                    stage="challenge",
                    starting_balance=STARTING_BALANCE,
                ).pk
            )
            for i in range(n_accounts)
        ]
        tokens, markets = [], []
        for i in range(n_markets):
            fees = i % 2 == 0
            market = Market.objects.create(
                condition_id=f"0xbench{i:04d}",
                question=f"Benchmark market {i}?",
                tick_size=Decimal("0.01"),
                min_order_size=Decimal("5"),
                accepting_orders=True,
                closed=False,
                fees_enabled=fees,
                fee_rate=Decimal("0.02") if fees else Decimal("0"),
                fee_exponent=Decimal("1"),
            )
            Token.objects.create(market=market, token_id=f"9{i:05d}1", outcome="Yes", index=0)
            Token.objects.create(market=market, token_id=f"9{i:05d}2", outcome="No", index=1)
            tokens.append(f"9{i:05d}1")
            markets.append(market.condition_id)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    connection.close()
    return Seed(raw_key=raw_key, account_ids=account_ids, tokens=tokens, markets=markets)


# --- the feed stand-in --------------------------------------------------------------------------
class Publisher:
    """Republishes every token's book (fresh) and beats every shard, like the feed process."""

    def __init__(self, seed: Seed) -> None:
        self.seed = seed
        self.stop = threading.Event()
        self.published = 0
        self.thread = threading.Thread(target=self._run, name="bench-publisher", daemon=True)

    def publish_once(self, n: int) -> None:
        from marketdata.book import OrderBook
        from marketdata.bus import BookTop, get_bus

        bus = get_bus()
        tops = []
        for token, market in zip(self.seed.tokens, self.seed.markets, strict=True):
            book = OrderBook.from_snapshot(
                {
                    "market": market,
                    "asset_id": token,
                    "timestamp": str(int(time.time() * 1000)),
                    "hash": f"bench{n}",
                    "bids": [{"price": "0.49", "size": "100000"}],
                    # A size that changes each time: a real level moves, and depletion resets.
                    "asks": [
                        {"price": "0.50", "size": str(1_000_000 + n % 1000)},
                        {"price": "0.51", "size": "1000000"},
                    ],
                    "tick_size": "0.01",
                }
            )
            tops.append(BookTop.from_book(book))
        bus.publish(tops)
        for shard in range(getattr(bus, "n_shards", 1)):
            bus.heartbeat(shard)
        self.published += 1

    def _run(self) -> None:
        for n in itertools.count(1):
            if self.stop.wait(PUBLISH_EVERY_S):
                return
            try:
                self.publish_once(n)
            except Exception as exc:  # keep publishing; the run reports STALE_BOOK if not
                print(f"publisher: {type(exc).__name__}: {exc}", flush=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


# --- endpoints ----------------------------------------------------------------------------------
def build_endpoints(seed: Seed) -> list[Endpoint]:
    single = seed.account_ids[0]
    many = itertools.cycle(seed.account_ids[1:])
    bare_accounts = itertools.cycle(seed.account_ids)
    tokens_many = itertools.cycle(seed.tokens)
    tokens_one = itertools.cycle(seed.tokens)

    def order(account_id: str, token_id: str) -> tuple[str, bytes | None]:
        body = {
            "account_id": account_id,
            "token_id": token_id,
            "side": "BUY",
            "type": "market",
            "amount": ORDER_AMOUNT,
        }
        return "/v1/orders", json.dumps(body).encode()

    return [
        Endpoint(
            "bare",
            "bare view (1 indexed read)",
            "GET",
            200,
            lambda: (f"/bench/bare/{next(bare_accounts)}", None),
        ),
        Endpoint(
            "orders_many",
            f"POST /v1/orders, market BUY, across {len(seed.account_ids) - 1} accounts",
            "POST",
            201,
            lambda: order(next(many), next(tokens_many)),
        ),
        Endpoint(
            "orders_one",
            "POST /v1/orders, market BUY, one account",
            "POST",
            201,
            lambda: order(single, next(tokens_one)),
        ),
    ]


# --- census -------------------------------------------------------------------------------------
@dataclass
class Census:
    queries: dict[str, int]
    sql: dict[str, list[str]]
    redis_calls: dict[str, int]


def query_census(seed: Seed, endpoints: list[Endpoint], redis_url: str) -> Census:
    """SQL statements and Redis commands per request, in process with the same settings,
    after one warm-up request of each (caches warm, as in steady state). Runs before the
    publisher thread starts, so the Redis server's command counter sees only the request."""
    import redis
    from django.db import connection
    from django.test import Client as DjangoClient
    from django.test.utils import CaptureQueriesContext

    client = DjangoClient(HTTP_X_API_KEY=seed.raw_key)
    redis_client = redis.Redis.from_url(redis_url)
    redis_calls: dict[str, int] = {}

    def call(ep: Endpoint) -> None:
        path, body = ep.next_request()
        if ep.method == "GET":
            response = client.get(path)
        else:
            response = client.post(path, data=body, content_type="application/json")
        if response.status_code != ep.expected:
            raise RuntimeError(
                f"census: {ep.name} answered {response.status_code}: {response.content[:300]!r}"
            )

    queries: dict[str, int] = {}
    sql: dict[str, list[str]] = {}
    for ep in endpoints:
        call(ep)
        before = _redis_commands(redis_client)
        with CaptureQueriesContext(connection) as ctx:
            call(ep)
        redis_calls[ep.name] = _redis_commands(redis_client) - before - 1
        queries[ep.name] = len(ctx.captured_queries)
        sql[ep.name] = [q["sql"] for q in ctx.captured_queries]
    connection.close()
    return Census(queries=queries, sql=sql, redis_calls=redis_calls)


def _redis_commands(client: Any) -> int:
    """Commands the Redis server has processed so far (its own counter; the INFO call that
    reads it counts one)."""
    return int(client.info("stats")["total_commands_processed"])


# --- after the run ------------------------------------------------------------------------------
@dataclass
class Integrity:
    violations: list[str]
    orders_matched: int
    orders_other: Counter[str]
    created_201: int
    unanswered: int  # requests the client gave up on (timeout, transport error): outcome unknown
    fills: int
    ledger_entries: int


def integrity_check(created_201: int, unanswered: int) -> Integrity:
    from django.db.models import Count

    from accounts.models import LedgerEntry
    from trading.audit import ledger_audit
    from trading.models import Fill, Order

    statuses: Counter[str] = Counter(
        {row["status"]: row["n"] for row in Order.objects.values("status").annotate(n=Count("id"))}
    )
    return Integrity(
        violations=[str(v) for v in ledger_audit()],
        orders_matched=statuses.pop("matched", 0),
        orders_other=statuses,
        created_201=created_201,
        unanswered=unanswered,
        fills=Fill.objects.count(),
        ledger_entries=LedgerEntry.objects.count(),
    )


# --- report -------------------------------------------------------------------------------------
@dataclass
class Report:
    info: dict[str, str]
    args: argparse.Namespace
    command: str
    started: dt.datetime
    endpoints: list[Endpoint]
    census: Census
    closed: dict[str, Tally] = field(default_factory=dict)
    opened: dict[str, Tally] = field(default_factory=dict)
    warmups: dict[str, Tally] = field(default_factory=dict)
    rounds: list[dict[str, float]] = field(default_factory=list)
    foreign_before: float = math.nan
    integrity: Integrity | None = None
    publishes: int = 0

    def ratio(self, name: str) -> float:
        bare = self.closed["bare"].throughput
        return self.closed[name].throughput / bare if bare else math.nan

    def goal_rate(self, name: str) -> float:
        return self.args.rate_one if name == "orders_one" else self.args.rate_many

    def rate_for(self, name: str) -> float:
        """The open-loop rate: the goal's, unless the closed loop measured less capacity than
        that — then 80 % of the measured capacity, so the latency measured is that of a
        server keeping up rather than of an ever-growing queue."""
        goal = self.goal_rate(name)
        closed = self.closed.get(name)
        if closed is None or closed.throughput >= goal:
            return goal
        return max(1.0, round(0.8 * closed.throughput))


def verdicts(report: Report) -> list[tuple[str, str, bool]]:
    out = []
    for name, goal in (("orders_many", GOAL_MANY_PER_S), ("orders_one", GOAL_ONE_PER_S)):
        t = report.closed.get(name)
        if t is None:
            continue
        rounds = [r[name] for r in report.rounds if name in r]
        label = "across accounts" if name == "orders_many" else "on one account"
        out.append(
            (
                f"market orders {label} ≥ {goal:.0f}/s",
                f"{t.throughput:.0f}/s (rounds {min(rounds):.0f}–{max(rounds):.0f}), "
                f"{t.errors} errors",
                t.throughput >= goal and t.errors == 0,
            )
        )
        ol = report.opened.get(name)
        if ol is not None:
            rate, goal_rate = report.rate_for(name), report.goal_rate(name)
            note = "" if rate == goal_rate else f" (below capacity: run at {rate:g}/s)"
            out.append(
                (
                    f"{label}: {goal_rate:g}/s sustained open loop, no errors",
                    f"{ol.throughput:.0f}/s achieved{note}, "
                    f"p50 {_fmt(ol.pct(50))} ms, p99 {_fmt(ol.pct(99))} ms, {ol.errors} errors",
                    rate == goal_rate and ol.errors == 0 and ol.throughput >= 0.95 * rate,
                )
            )
    integ = report.integrity
    if integ is not None:
        out.append(
            (
                "ledger audit clean after the run",
                f"{len(integ.violations)} violations",
                not integ.violations,
            )
        )
        out.append(
            (
                "exactly once: 201s ≤ matched orders in the database ≤ 201s + unanswered",
                f"{integ.orders_matched} matched, {integ.created_201} × 201, "
                f"{integ.unanswered} unanswered",
                integ.created_201 <= integ.orders_matched <= integ.created_201 + integ.unanswered,
            )
        )
    return out


def results_table(report: Report) -> str:
    lines = [
        "| endpoint | throughput (req/s) | ratio to bare | closed-loop p50 (ms) | p99 "
        "| open-loop rate | p50 (ms) | p99 | max | achieved | errors (closed / open) "
        "| SQL per request | Redis commands |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for ep in report.endpoints:
        closed = report.closed.get(ep.name)
        ol = report.opened.get(ep.name)
        lines.append(
            f"| {ep.label} | {_fmt(closed.throughput if closed else None, '.0f')} "
            f"| {_fmt(report.ratio(ep.name) if closed else None, '.2f')} "
            f"| {_fmt(closed.pct(50) if closed else None)} "
            f"| {_fmt(closed.pct(99) if closed else None)} "
            f"| {f'{report.rate_for(ep.name):g}/s' if ol else 'n/a'} "
            f"| {_fmt(ol.pct(50) if ol else None)} | {_fmt(ol.pct(99) if ol else None)} "
            f"| {_fmt(ol.pct(100) if ol else None)} "
            f"| {_fmt(ol.throughput, '.0f') + '/s' if ol else 'n/a'} "
            f"| {closed.errors if closed else 'n/a'} / {ol.errors if ol else 'n/a'} "
            f"| {report.census.queries.get(ep.name, 'n/a')} "
            f"| {report.census.redis_calls.get(ep.name, 'n/a')} |"
        )
    return "\n".join(lines)


def cpu_table(report: Report) -> str:
    lines = [
        "| endpoint (closed loop) | gunicorn | postgres | redis | server total "
        "| load generator | not ours | cores busy (all / not ours) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for ep in report.endpoints:
        t = report.closed.get(ep.name)
        if t is None:
            continue
        c = t.cpu
        ms = c.per_request_ms
        lines.append(
            f"| {ep.label} | {ms(c.gunicorn):.2f} | {ms(c.postgres):.2f} | {ms(c.redis):.2f} "
            f"| {ms(c.gunicorn + c.postgres + c.redis):.2f} | {ms(c.client):.2f} "
            f"| {ms(c.other):.2f} | {c.cores(c.machine):.2f} / {c.cores(c.other):.2f} |"
        )
    return "\n".join(lines)


def render_section(report: Report) -> str:
    info, args = report.info, report.args
    verdict_rows = "\n".join(
        f"| {goal} | {measured} | {'PASS' if ok else 'FAIL'} |"
        for goal, measured, ok in verdicts(report)
    )
    errors = error_lines(report)
    integ = report.integrity
    integ_text = "not run"
    if integ is not None:
        others = ", ".join(f"{k} {v}" for k, v in sorted(integ.orders_other.items())) or "none"
        integ_text = (
            f"{integ.orders_matched} matched orders (other statuses: {others}), "
            f"{integ.fills} fills, {integ.ledger_entries} ledger entries; "
            f"`ledger_audit()` over every account: {len(integ.violations)} violations"
        )
    census_sql = "; ".join(
        f"{ep.label}: {report.census.queries[ep.name]}" for ep in report.endpoints
    )
    return f"""{SECTION_TITLE}

Measured {report.started:%Y-%m-%d %H:%M} UTC by `{report.command}`
(`make bench` runs it with the defaults), on {info["code"]}.

**Machine:** {info["cpus"]} CPUs ({info["cpu_model"]}), {info["memory"]} RAM, Linux
{info["kernel"]}; Python {info["python"]}, Django {info["django"]}, gunicorn {info["gunicorn"]},
psycopg {info["psycopg"]}, PostgreSQL {info["postgres"]}, Redis {info["redis"]}. Other
processes were using {report.foreign_before:.2f} cores just before the run (load average
{info["loadavg"]}).

**Setup.** gunicorn `config.wsgi:application`, {args.workers} sync workers, settings
`bench.settings_bench` (production settings, `DEBUG=False`, plus the baseline's URL), the
trader rate limit raised above the load (its Redis path still runs); database `{args.db}`,
fresh: one trader (personal trader key, `X-API-Key: tk_…`) with {args.accounts} accounts of
{STARTING_BALANCE:,} each, {args.markets} markets (half with a 0.02 taker fee). A thread of this
script stands in for the feed: every {PUBLISH_EVERY_S:g} s it republishes every token's book
fresh on the RedisBus (`{args.redis}`; asks 0.50 and 0.51, the 0.50 size changing each time
so depletion memories reset, as on a live level) and beats the feed heartbeat
({report.publishes} publications). **Orders:** `POST /v1/orders`
`{{"side": "BUY", "type": "market", "amount": "{ORDER_AMOUNT}"}}` (FOK): each fills 4 shares
at 0.50 as taker — account row lock, depletion compare-and-set on Redis, Order, Fill, TRADE
(+ FEE) ledger entries, position, equity snapshot — and answers 201 with the fill. "Across
accounts" cycles the orders over {args.accounts - 1} accounts and the tokens; "one account"
sends every order to the same account (every order takes the same row lock).
**Baseline:** `bench/urls_bench.py`, a plain Django view, same middleware, no auth, one
primary-key read. **Load generator:** asyncio, the hand-rolled HTTP/1.1 client of
bench/partner_api.py, in this process, on the same cores as gunicorn, PostgreSQL and Redis.

**Throughput:** closed loop, {args.concurrency} concurrent connections, {args.rounds} round(s);
each round runs every endpoint for {args.duration / args.rounds:g} s in rotating order;
warm-up {args.warmup:g} s per endpoint first. Closed-loop p50/p99 are at that saturation.
**Latency:** open loop for {args.duration:g} s per endpoint at the goal rate
({args.rate_many:g}/s across accounts, {args.rate_one:g}/s on one account) — or, when the closed
loop measured less capacity than that, at 80 % of the measured capacity (an open loop above
capacity only measures a growing queue); send times fixed in advance, latency from the
scheduled send time. **Errors:** non-2xx answers, transport errors and timeouts.

| goal | measured | verdict |
|---|---|---|
{verdict_rows}

{results_table(report)}

SQL statements per request (in process, `CaptureQueriesContext`, BEGIN/SAVEPOINT/COMMIT
included, caches warm): {census_sql}. Not counted: the connection health check before a
request's first query under gunicorn (`CONN_HEALTH_CHECKS`; core.dbbackends.postgresql sends
its `SELECT 1` only when the connection's socket has something to read, i.e. the server may
have closed it). "Redis commands" is the server's own count (`INFO stats`), so the commands
inside Lua scripts count one by one (the rate limiter's script alone runs about 20); an
order makes 4 round trips to Redis (the limiter's script; the book with its feed
heartbeat; the positions' books with their heartbeats and the depletion records; the
depletion compare-and-set).

CPU milliseconds per request during the closed-loop phases, from /proc ("postgres" and "redis"
count every such process on the machine; "not ours" is the rest of the machine's busy time):

{cpu_table(report)}

**After the run:** {integ_text}.
{chr(10).join(errors) if errors else "No errors."}
"""


def print_report(report: Report) -> None:
    print()
    print(results_table(report))
    print()
    print(cpu_table(report))
    print()
    for goal, measured, ok in verdicts(report):
        print(f"{'PASS' if ok else 'FAIL'}  {goal}: {measured}")
    for line in error_lines(report):
        print(line)
    if report.integrity and report.integrity.violations:
        print("audit violations (first 10):")
        for v in report.integrity.violations[:10]:
            print("  ", v)


# --- run ----------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Trading engine benchmark (issue #4); see the module docstring.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--part", choices=("placement", "matching", "all"), default="all",
                   help="matching runs bench/engine_matching.py if present")  # fmt: skip
    p.add_argument("--duration", type=float, default=10.0, help="seconds per endpoint and mode")
    p.add_argument("--rounds", type=int, default=5, help="closed-loop rounds (interleaving)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per endpoint")
    p.add_argument("--concurrency", type=int, default=16, help="closed-loop connections")
    p.add_argument("--rate-many", type=float, default=GOAL_MANY_PER_S, help="open-loop rate")
    p.add_argument("--rate-one", type=float, default=GOAL_ONE_PER_S, help="open-loop rate")
    # An order waits on ~15 SQL and ~6 Redis round trips: 4 sync workers overlap those waits
    # on 2 cores (2 workers left the CPU idle during them: ~40 vs ~65 orders/s here).
    p.add_argument("--workers", type=int, default=4, help="gunicorn sync workers")
    p.add_argument("--accounts", type=int, default=200, help="seeded accounts")
    p.add_argument("--markets", type=int, default=8, help="seeded markets (one token each)")
    p.add_argument("--port", type=int, default=0, help="gunicorn port (0: a free one)")
    p.add_argument("--wait-quiet", type=float, default=20.0, metavar="SECONDS",
                   help="first wait up to this long for other processes to go quiet")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="short smoke run; implies --no-write")
    p.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    p.add_argument("--show-sql", action="store_true", help="print the census SQL")
    p.add_argument("--settings", default="bench.settings_bench", help="Django settings module")
    p.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432", help="server URL")
    p.add_argument("--db", default=DEFAULT_DB, help="database to DROP and recreate")
    p.add_argument("--redis", default=DEFAULT_REDIS, help="Redis URL (its DB is flushed)")
    args, rest = p.parse_known_args(argv)
    args.rest = rest
    if args.quick:
        args.duration = min(args.duration, 2.0)
        args.rounds = 1
        args.warmup = min(args.warmup, 0.5)
        args.no_write = True
    if args.accounts < 2 or args.markets < 1:
        p.error("--accounts must be ≥ 2 and --markets ≥ 1")
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", args.db):
        p.error("--db must be a plain lower-case identifier")
    return args


async def run_load(report: Report, port: int, raw_key: str, gunicorn_pid: int) -> None:
    args = report.args
    client = RawClient("127.0.0.1", port, raw_key, max(args.concurrency, 64))
    endpoints = report.endpoints
    try:
        await closed_rounds(
            client, endpoints, args=args, gunicorn_pid=gunicorn_pid,
            closed=report.closed, rounds=report.rounds, warmups=report.warmups,
        )  # fmt: skip
        for ep in endpoints:
            if ep.name == "bare":
                continue
            rate = report.rate_for(ep.name)
            print(f"open loop {ep.name} ({rate:g}/s, {args.duration:g}s)", flush=True)
            tally = report.opened.setdefault(ep.name, Tally(ep.name, "open", rate))
            await open_loop(
                client, ep, rate=rate, duration=args.duration,
                gunicorn_pid=gunicorn_pid, tally=tally,
            )  # fmt: skip
            await asyncio.sleep(0.5)
    finally:
        await client.close()


def run_placement(args: argparse.Namespace, argv: list[str]) -> int:
    import psycopg
    import redis

    started = dt.datetime.now(dt.UTC)
    command = shlex.join(["python", "bench/engine.py", *argv])
    db_url = f"{args.pg}/{args.db}"
    os.environ["DATABASE_URL"] = db_url
    os.environ["REDIS_URL"] = args.redis
    os.environ.setdefault("SECRET_KEY", "bench-" + secrets.token_urlsafe(32))
    # The trader limiter keeps its Redis path, with limits the run cannot reach.
    os.environ["RATE_LIMIT_DEFAULT_PER_SECOND"] = "1000000"
    os.environ["RATE_LIMIT_DEFAULT_PER_MINUTE"] = "60000000"

    info = machine_info(args.pg, args.redis)
    print(f"machine: {info}", flush=True)
    t0 = time.monotonic()
    with psycopg.connect(f"{args.pg}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {args.db} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {args.db}")
    redis.Redis.from_url(args.redis).flushdb()
    django_setup(args.settings)
    migrate()
    print(f"database {args.db} migrated in {time.monotonic() - t0:.1f}s", flush=True)
    seed = seed_data(args.accounts, args.markets)
    publisher = Publisher(seed)
    publisher.publish_once(0)
    census = query_census(seed, build_endpoints(seed), args.redis)
    publisher.start()
    try:
        print(f"SQL per request: {census.queries}; Redis: {census.redis_calls}", flush=True)
        if args.show_sql:
            for name, statements in census.sql.items():
                print(f"-- {name}")
                for statement in statements:
                    print(f"   {statement}")
        report = Report(
            info=info,
            args=args,
            command=command,
            started=started,
            endpoints=build_endpoints(seed),
            census=census,
        )
        report.foreign_before = wait_quiet(args.wait_quiet)
        port = args.port or free_port()
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": args.settings}
        with tempfile.TemporaryDirectory(prefix="polysim-bench-") as tmp:
            log_path = Path(tmp) / "gunicorn.log"
            server = start_gunicorn(port, args.workers, env, log_path)
            try:
                wait_ready(server, port, f"/bench/bare/{seed.account_ids[0]}", timeout=30)
                print(f"gunicorn pid {server.pid} on 127.0.0.1:{port}", flush=True)
                asyncio.run(run_load(report, port, seed.raw_key, server.pid))
            finally:
                stop_gunicorn(server)
                log = log_path.read_text(errors="replace")
                if re.search(r"Traceback|Error|CRITICAL", log):
                    print("gunicorn log (tail):\n" + "\n".join(log.splitlines()[-30:]))
    finally:
        publisher.close()
        report_publishes = publisher.published
    # The census placed 2 orders per order endpoint in process (warm-up + counted).
    tallies = [*report.warmups.values(), *report.closed.values(), *report.opened.values()]
    created = 2 * sum(1 for ep in report.endpoints if ep.method == "POST") + sum(
        t.statuses.get(201, 0) for t in tallies
    )
    unanswered = sum(  # sent, but the answer never came: its outcome is unknown
        n
        for t in tallies
        for kind, n in t.error_kinds.items()
        if not kind.startswith(("HTTP", "dropped"))
    )
    report.publishes = report_publishes
    report.integrity = integrity_check(created, unanswered)
    print_report(report)
    if not args.no_write:
        write_docs_section(SECTION_TITLE, render_section(report))
        print(f"\nwrote {DOCS.relative_to(ROOT)}")
    return 0 if all(ok for _, _, ok in verdicts(report)) or args.quick else 1


def run_matching(args: argparse.Namespace) -> int | None:
    """bench/engine_matching.py's main(argv), if that module exists (None if not)."""
    if importlib.util.find_spec("bench.engine_matching") is None:
        return None
    passthrough = list(args.rest)
    for flag in ("quick", "no_write"):
        if getattr(args, flag):
            passthrough.append("--" + flag.replace("_", "-"))
    # Its own process: the placement part has configured Django on another database here.
    script = ROOT / "bench" / "engine_matching.py"
    return subprocess.call([sys.executable, str(script), *passthrough], cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    status = 0
    if args.part in ("placement", "all"):
        if args.rest and args.part == "placement":
            raise SystemExit(f"unknown arguments: {args.rest}")
        status = run_placement(args, argv)
    if args.part in ("matching", "all"):
        matched = run_matching(args)
        if matched is None:
            print("part (b), matching: bench/engine_matching.py is not in this tree; skipped")
            if args.part == "matching":
                return 2
        else:
            status = status or matched
    return status


if __name__ == "__main__":
    raise SystemExit(main())
