#!/usr/bin/env python
"""Maker matching benchmark (issue #4): `manage.py trading match` as its own process on
Postgres + Redis, fed book updates on the RedisBus at a fixed rate, with 10,000 and then
100,000 resting orders over the same tokens (the 10k run is the same-run baseline).

Usage:
    .venv/bin/python bench/engine_matching.py           # full run; rewrites the
                                                        # "Maker matching (issue #4)" section
                                                        # of docs/benchmarks.md
    .venv/bin/python bench/engine_matching.py --quick   # smoke run, docs untouched
    from bench.engine_matching import run; run(orders=10_000, ...)   # one scenario, a dict

Needs Postgres (--db or BENCH_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/polysim_bench_matching: that database is DROPPED and
re-created for every scenario) and Redis (--redis or BENCH_REDIS_URL, default
redis://127.0.0.1:6379/2, flushed). The matcher runs with MATCHER_WORKERS from the
environment (default: the setting's, 4).

Workload (SYNTHETIC): --tokens tokens (binary markets, tick 0.001, no fees), funded accounts,
and N resting limit BUYs of 10 shares at prices 0.050–0.400 spread over the tokens, seeded
with bulk SQL as valid resting orders (reservations on the orders and the accounts, deposits
in the ledger: the ledger audit must pass at the end). The publisher sends --rate updates/s
(batches every 10 ms, like the feed), each a 10-level top of a random token that crosses
nothing (bids ≤ 0.040, asks ≥ 0.600); a --cross-fraction of them instead show the token's
highest resting BUY price as the best ask, with 10 shares: exactly one order fills (price
priority), the rest of the book does not move. --cross-fraction takes a list: every order
count runs at every fraction.

Measured per scenario:
  latency   publish → committed fill: the top's `published_at` (stamped by the publisher
            just before the XADD) to the moment the fill's transaction returned in the
            matcher (its --stats-file), p50/p99/max over every fill;
  cpu       the matcher process's user+system CPU (/proc/<pid>/stat) from the first update
            to the last entry processed, per update — the initial index load excluded and
            reported on its own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from bench.common import DOCS, code_version, write_docs_section  # noqa: E402

SECTION_TITLE = "## Maker matching (issue #4)"
DEFAULT_DB = os.environ.get(
    "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/polysim_bench_matching"
)
DEFAULT_REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/2")
ORDER_SIZE = Decimal("10")
CLK_TCK = os.sysconf("SC_CLK_TCK")
# BENCH_PROFILE=FILE: the matcher runs under cProfile, stats dumped to FILE on exit. Its clock is
# the main thread's CPU time (run with MATCHER_WORKERS=1 so every fill is on that thread): on a
# shared machine wall-clock profiles mostly show waiting for the CPU.
_PROFILE_CHILD = """
import cProfile, runpy, sys, time
out, sys.argv = sys.argv[1], sys.argv[2:]
profile = cProfile.Profile(time.thread_time)
profile.enable()
try:
    runpy.run_path("manage.py", run_name="__main__")
finally:
    profile.disable()
    profile.dump_stats(out)
"""
_PROFILE = (
    ["-c", _PROFILE_CHILD, os.environ["BENCH_PROFILE"]] if os.environ.get("BENCH_PROFILE") else []
)
# BENCH_MATCHER_PREFIX="valgrind --tool=callgrind --callgrind-out-file=F": the matcher runs under
# that command (instructions per update and per fill, independent of the machine's load: the
# totals of a run at two crossing fractions, same seed, give the instructions per fill). It
# then processes the updates as a backlog, slowly: run short scenarios (--seconds).
_PREFIX = shlex.split(os.environ.get("BENCH_MATCHER_PREFIX", ""))


# --- database --------------------------------------------------------------------------------
def _recreate_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=_env(url, ""),
        check=True,
    )


_BENCH_SECRET = secrets.token_urlsafe(32)  # this run's only: nothing signed outlives it


def _env(db_url: str, redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "PRICE_BUS_SHARDS": "1",
        # Production-shaped: DEBUG off (DEBUG=1 wraps every query in Django's debug cursor,
        # which logs and records it: CPU a deployed matcher never spends).
        "DEBUG": os.environ.get("DEBUG", "0"),
        "SECRET_KEY": os.environ.get("SECRET_KEY") or _BENCH_SECRET,
    }


def _django(db_url: str, redis_url: str) -> None:
    os.environ.update(_env(db_url, redis_url))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def seed(*, orders: int, tokens: int, accounts: int, rng: random.Random) -> dict[str, Any]:
    """Markets, tokens, funded accounts and resting BUYs, in bulk. Returns, per token, its
    resting prices (ascending) for the publisher's crossing updates."""
    from django.db import connection, transaction
    from django.utils import timezone

    from accounts.models import Account, LedgerEntry, User
    from marketdata.models import Market, Token
    from trading.models import Order

    now = timezone.now()
    t0 = time.perf_counter()
    markets = [
        Market(
            condition_id=f"0xbench{n:06d}",
            question=f"Bench market {n}?",
            tick_size=Decimal("0.001"),
            min_order_size=Decimal("5"),
            accepting_orders=True,
            closed=False,
        )
        for n in range(tokens // 2)
    ]
    token_rows = []
    for n, m in enumerate(markets):
        for i, outcome in enumerate(("Yes", "No")):
            token_rows.append(
                Token(market=m, token_id=f"{n:06d}{i}{'7' * 70}", outcome=outcome, index=i)
            )
    per_price: dict[int, list[Decimal]] = {}
    prices = [Decimal(p) / 1000 for p in range(50, 401)]
    plan = []  # (account index, token index, price)
    for k in range(orders):
        plan.append((k % accounts, rng.randrange(len(token_rows)), rng.choice(prices)))
    reserved = [Decimal(0)] * accounts
    for a, _t, p in plan:
        reserved[a] += p * ORDER_SIZE
    funding = Decimal("1000000")
    with transaction.atomic():
        Market.objects.bulk_create(markets, batch_size=2000)
        markets_by_id = {m.condition_id: m for m in Market.objects.all()}
        for tok in token_rows:
            tok.market = markets_by_id[tok.market.condition_id]
        Token.objects.bulk_create(token_rows, batch_size=2000)
        users = [User(email=f"bench{n}@example.com", password="!") for n in range(accounts)]
        User.objects.bulk_create(users, batch_size=2000)
        users = list(User.objects.filter(email__startswith="bench").order_by("email"))
        accs = [
            Account(
                owner=u,
                starting_balance=funding,
                high_water_mark=funding,
                cash=funding,
                reserved_cash=reserved[n],
                created_at=now,
            )
            for n, u in enumerate(users)
        ]
        Account.objects.bulk_create(accs, batch_size=2000)
        LedgerEntry.objects.bulk_create(
            [
                LedgerEntry(
                    account=a,
                    epoch=a.epoch,
                    kind=LedgerEntry.Kind.INITIAL_DEPOSIT,
                    amount=funding,
                    balance_after=funding,
                )
                for a in accs
            ],
            batch_size=2000,
        )
        rows = []
        for n, (a, t, p) in enumerate(plan):
            tok = token_rows[t]
            rows.append(
                Order(
                    id=uuid.uuid4(),
                    account=accs[a],
                    epoch=accs[a].epoch,
                    token_id=tok.token_id,
                    market_id=tok.market.condition_id,
                    side="BUY",
                    type="limit",
                    time_in_force="GTC",
                    price=p,
                    size=ORDER_SIZE,
                    status="live",
                    reserved_cash=p * ORDER_SIZE,
                    created_at=now - dt.timedelta(seconds=600, microseconds=orders - n),
                )
            )
            per_price.setdefault(t, []).append(p)
        Order.objects.bulk_create(rows, batch_size=5000)
    with connection.cursor() as cur:
        # Placed (and last changed) ten minutes ago, not during the run: the matcher's
        # reconcile re-reads only what changed since its previous pass (plus a margin).
        cur.execute("UPDATE trading_order SET updated_at = now() - interval '10 minutes'")
        cur.execute("ANALYZE")
    return {
        "tokens": [t.token_id for t in token_rows],
        "resting": {token_rows[t].token_id: sorted(ps) for t, ps in per_price.items()},
        "seconds": time.perf_counter() - t0,
    }


# --- publishing ------------------------------------------------------------------------------
def _levels(rng: random.Random, start: int, step: int) -> list[list[str]]:
    return [
        [f"{(start + step * i) / 1000:.3f}", f"{rng.randrange(10, 5000)}.{rng.randrange(100):02d}"]
        for i in range(10)
    ]


def _top(token_id: str, bids: list[list[str]], asks: list[list[str]], at: int) -> bytes:
    return orjson.dumps(
        {
            "token_id": token_id,
            "market": "0xbench",
            "best_bid": bids[0][0],
            "best_ask": asks[0][0],
            "mid": None,
            "spread": None,
            "last_trade_price": None,
            "last_trade_side": None,
            "tick_size": "0.001",
            "timestamp_ms": at,
            "hash": "bench",
            "fresh": True,
            "bids": bids,
            "asks": asks,
            "published_at": at,
        }
    )


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def _read_stats(path: Path) -> dict[str, Any]:
    for _ in range(50):
        try:
            return dict(orjson.loads(path.read_bytes()))
        except (FileNotFoundError, orjson.JSONDecodeError):
            time.sleep(0.1)
    raise RuntimeError(f"no stats in {path}")


def run(
    *,
    orders: int = 10_000,
    tokens: int = 2_000,
    rate: int = 2_000,
    seconds: float = 20.0,
    cross_fraction: float = 0.01,
    accounts: int = 1_000,
    db_url: str = DEFAULT_DB,
    redis_url: str = DEFAULT_REDIS,
    seed_value: int = 4,
) -> dict[str, Any]:
    """One scenario: fresh database and Redis, seed, start the matcher process, publish for
    `seconds`, wait until it has processed everything, stop it, audit. Returns the figures."""
    import redis

    rng = random.Random(seed_value)
    load_before = _loadavg()
    _recreate_database(db_url)
    _django(db_url, redis_url)
    from django.db import connections

    from marketdata.bus import RedisBus
    from trading.audit import ledger_audit

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    seeded = seed(orders=orders, tokens=tokens, accounts=accounts, rng=rng)
    connections.close_all()
    bus = RedisBus.from_url(redis_url, n_shards=1)
    bus.heartbeat(0)

    stats_path = Path(tempfile.mkdtemp()) / "matcher.json"
    proc = subprocess.Popen(
        [*_PREFIX, sys.executable, *_PROFILE, "manage.py", "trading", "match", "--shard", "0/1",
         "--stats-file", str(stats_path)],
        cwd=ROOT, env=_env(db_url, redis_url), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not stats_path.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("matcher did not start")
            time.sleep(0.05)
        loaded = _read_stats(stats_path)
        time.sleep(1.0)  # let it settle into its blocking read
        cpu0 = _cpu_seconds(proc.pid)
        token_ids: list[str] = seeded["tokens"]
        resting: dict[str, list[Decimal]] = {t: list(p) for t, p in seeded["resting"].items()}
        crossable = [t for t in token_ids if resting.get(t)]
        per_batch = max(1, rate // 100)
        n_batches = int(seconds * 100)
        published = crosses = 0
        start = time.perf_counter()
        last_beat = time.monotonic()
        for b in range(n_batches):
            due = start + b / 100
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            at = int(time.time() * 1000)
            items = []
            for _ in range(per_batch):
                if rng.random() < cross_fraction and crossable:
                    tok = rng.choice(crossable)
                    price = resting[tok].pop()
                    if not resting[tok]:
                        crossable.remove(tok)
                    asks = [[f"{price:.3f}", "10"], *_levels(rng, 600, 1)[:9]]
                    crosses += 1
                else:
                    tok = rng.choice(token_ids)
                    asks = _levels(rng, 600, 1)
                items.append((tok, _top(tok, _levels(rng, 40, -1), asks, at)))
            bus.publish_json(items)
            published += len(items)
            if time.monotonic() - last_beat >= 1.0:
                bus.heartbeat(0)
                last_beat = time.monotonic()
        publish_seconds = time.perf_counter() - start
        entries_sent = n_batches
        while True:  # until every entry is processed and acknowledged
            s = _read_stats(stats_path)
            if s["entries"] >= entries_sent and bus.pending_count(0, "matcher") == 0:
                break
            if time.monotonic() > deadline + seconds + (3600 if _PREFIX else 120):
                raise RuntimeError(f"matcher did not catch up: {s['entries']}/{entries_sent}")
            if time.monotonic() - last_beat >= 1.0:  # the feed stays alive while it catches up
                bus.heartbeat(0)
                last_beat = time.monotonic()
            time.sleep(0.2)
        cpu1 = _cpu_seconds(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=600 if _PREFIX else 60)
    final = _read_stats(stats_path)
    violations = ledger_audit()
    connections.close_all()
    lat = sorted(final["latencies_ms"])

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    return {
        "orders": orders,
        "tokens": tokens,
        "rate_target": rate,
        "cross_fraction": cross_fraction,
        "rate_sent": published / publish_seconds,
        "updates": published,
        "crossing_updates": crosses,
        "fills": final["fills"],
        "duplicates": final["duplicates"],
        "seed_seconds": seeded["seconds"],
        "load_seconds": loaded["load_seconds"],
        "loaded": loaded["loaded"],
        "cpu_seconds": cpu1 - cpu0,
        "cpu_us_per_update": (cpu1 - cpu0) / published * 1e6,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": lat[-1] if lat else float("nan"),
        "audit_violations": len(violations),
        "load_before": load_before,
        "load_after": _loadavg(),
    }


# --- report ----------------------------------------------------------------------------------
def machine_info() -> dict[str, str]:
    cpu_model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    return {
        "cpus": str(len(os.sched_getaffinity(0))),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg": _loadavg(),
        "code": code_version(),
        "workers": os.environ.get("MATCHER_WORKERS", "4 (default)"),
    }


def render(results: list[dict[str, Any]], info: dict[str, str], command: str) -> str:
    fractions = sorted({r["cross_fraction"] for r in results})
    rows = "\n".join(
        f"| {r['orders']:,} | {r['cross_fraction']} | {r['updates']:,} ({r['rate_sent']:,.0f}/s) | "
        f"{r['fills']:,} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | "
        f"{r['cpu_us_per_update']:.1f} | {r['load_seconds']:.2f} | {r['audit_violations']} | "
        f"{r['load_before']} → {r['load_after']} |"
        for r in results
    )
    p99_ok = all(r["p99_ms"] < 100 for r in results)
    p99s = ", ".join(
        f"{r['p99_ms']:.1f} ms ({r['orders']:,} @ {r['cross_fraction']})" for r in results
    )
    ratios = []
    for f in fractions:
        runs = [r for r in results if r["cross_fraction"] == f]
        base, big = runs[0], runs[-1]
        ratios.append(
            (f, big["orders"], base["orders"], big["cpu_us_per_update"] / base["cpu_us_per_update"])
        )
    cpu_ok = all(ratio <= 1.5 for *_, ratio in ratios)
    ratio_text = ", ".join(
        f"{ratio:.2f}× ({big:,} vs {base:,} @ {f})" for f, big, base, ratio in ratios
    )
    header = (
        "| resting orders | crossing fraction | updates (sent rate) | fills | p50 ms | p99 ms "
        "| max ms | matcher CPU µs/update | index load s | audit violations "
        "| load avg before → after |"
    )
    verdict_p99 = f"[{'PASS' if p99_ok else 'FAIL'}] p99 publish → committed fill < 100 ms"
    verdict_cpu = (
        f"[{'PASS' if cpu_ok else 'FAIL'}] matcher CPU per update at the largest order count "
        "within 1.5× of the smallest, at each crossing fraction"
    )
    return f"""{SECTION_TITLE}

`{command}` — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {info["code"]}; {info["cpus"]} CPUs
({info["cpu_model"]}, shared with other work: load average {info["loadavg"]} at the end; each
scenario's before/after is in the table), Python {info["python"]}, Postgres and Redis on the
same machine; matcher with MATCHER_WORKERS={info["workers"]}.

`manage.py trading match` as its own process; {results[0]["tokens"]:,} tokens; the publisher
sends 10-level tops on the RedisBus in batches every 10 ms; a fraction of updates cross
exactly one resting order (its token's highest BUY), the others cross nothing. Latency = the
top's `published_at` (stamped just before the XADD) to the fill's transaction returning in
the matcher, over every fill. CPU = the matcher process's user+system time from the first
update to the last entry processed, per update (the initial index load is the separate
column; the fills' own work is included, so the CPU per update grows with the crossing
fraction). Baseline: the smallest order count of the same invocation, same fraction.

{header}
|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|
{rows}

- {verdict_p99}: {p99s}
- {verdict_cpu}: {ratio_text}
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--orders", default="10000,100000", help="comma-separated scenarios")
    p.add_argument("--tokens", type=int, default=2000)
    p.add_argument("--rate", type=int, default=2000, help="book updates per second")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument(
        "--cross-fraction", default="0.01,0.05", help="comma-separated crossing fractions"
    )
    p.add_argument("--db", default=DEFAULT_DB)
    p.add_argument("--redis", default=DEFAULT_REDIS)
    p.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    p.add_argument("--quick", action="store_true", help="small smoke run, implies --no-write")
    args = p.parse_args(argv)
    if args.quick:
        args.orders, args.seconds, args.no_write = "2000,10000", 5.0, True
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(
        ["python", "bench/engine_matching.py", *(sys.argv[1:] if argv is None else argv)]
    )
    results = []
    for fraction in [float(x) for x in args.cross_fraction.split(",")]:
        for n in [int(x) for x in args.orders.split(",")]:
            r = run(
                orders=n,
                tokens=args.tokens,
                rate=args.rate,
                seconds=args.seconds,
                cross_fraction=fraction,
                db_url=args.db,
                redis_url=args.redis,
            )
            shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
            print(shown, flush=True)
            results.append(r)
    info = machine_info()
    section = render(results, info, command)
    print(section)
    if not args.no_write:
        write_docs_section(SECTION_TITLE, section)
        print(f"wrote the section to {DOCS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
