#!/usr/bin/env python
"""Client CPU of one maker fill: `order_fill_maker_cross` called in a loop, in this process,
on Postgres + Redis (a tool for comparing the matcher's per-fill cost before and after a
change; not a goal of the issue, and it writes no docs).

Usage:
    .venv/bin/python bench/matching_fill_cost.py --seed              # build the template DB
    .venv/bin/python bench/matching_fill_cost.py --fills 400         # measure (fresh copy)
    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \\
        .venv/bin/python bench/matching_fill_cost.py --fills 200 --warmup 50
    (instructions of the measured fills only: divide the total by --fills)

Workload: bench/engine_matching.py's seed (SYNTHETIC resting BUYs of 10 shares over
--tokens tokens, --accounts funded accounts), and a 10-level top published on the bus for
every token (the positions' marks). Fill k crosses the k-th token's highest resting BUY (a
top whose best ask is that order's price, 10 shares): one full fill per call, the token
order shuffled with a fixed seed so that the accounts gather open positions as the run goes
(fewer accounts: more positions per account at the same fill count).

Measured: process CPU time (user+system of this process: the client's work, not Postgres's
or Redis's) and wall time per fill over the --fills calls after --warmup calls.

Needs Postgres (--db or BENCH_DATABASE_URL; that database and `<name>_tpl_a<accounts>` are
DROPPED and re-created) and Redis (--redis or BENCH_REDIS_URL; flushed by --seed).
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.engine_matching import (  # noqa: E402
    DEFAULT_DB,
    DEFAULT_REDIS,
    _django,
    _levels,
    _recreate_database,
    _top,
    seed,
)


def _admin(url: str) -> tuple[str, str]:
    return url.rsplit("/", 1)[0] + "/postgres", url.rsplit("/", 1)[1]


def _template(name: str, accounts: int) -> str:
    return f"{name}_tpl_a{accounts}"


def make_template(*, db_url: str, redis_url: str, orders: int, tokens: int, accounts: int) -> None:
    import psycopg
    import redis

    admin, name = _admin(db_url)
    _recreate_database(db_url)
    _django(db_url, redis_url)
    from django.db import connections

    from marketdata.bus import RedisBus

    rng = random.Random(4)
    seeded = seed(orders=orders, tokens=tokens, accounts=accounts, rng=rng)
    connections.close_all()
    redis.Redis.from_url(redis_url).flushdb()
    bus = RedisBus.from_url(redis_url, n_shards=1)
    now = int(time.time() * 1000)
    items = [
        (t, _top(t, _levels(rng, 40, -1), _levels(rng, 600, 1), now)) for t in seeded["tokens"]
    ]
    for i in range(0, len(items), 500):
        bus.publish_json(items[i : i + 500])
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{_template(name, accounts)}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{_template(name, accounts)}" TEMPLATE "{name}"')
    print(f"template {_template(name, accounts)}: {orders} orders, {tokens} tokens")


def measure(
    *, db_url: str, redis_url: str, accounts: int, fills: int, warmup: int
) -> dict[str, float]:
    import psycopg

    admin, name = _admin(db_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{_template(name, accounts)}"')
    _django(db_url, redis_url)
    from django.db import connection

    from marketdata.bus import BookTop
    from trading.depletion import get_depletion_store
    from trading.models import Order
    from trading.services.matching import order_fill_maker_cross

    get_depletion_store().clear()  # a previous run's takes would deplete these levels

    best: dict[str, tuple[str, str, Decimal]] = {}
    rows = Order.objects.filter(status="live").order_by("token_id", "-price", "created_at")
    for oid, acc, tok, price in rows.values_list("pk", "account_id", "token_id", "price"):
        best.setdefault(tok, (str(oid), str(acc), price))
    plan = sorted(best.items())
    random.Random(7).shuffle(plan)
    if len(plan) < warmup + fills:
        raise SystemExit(f"only {len(plan)} tokens with resting orders")
    rng = random.Random(9)
    tops = []
    for tok, (_, _, price) in plan[: warmup + fills]:
        asks = [[f"{price:.3f}", "10"], *_levels(rng, 600, 1)[:9]]
        now = int(time.time() * 1000)
        tops.append(BookTop.from_json(_top(tok, _levels(rng, 40, -1), asks, now)))

    def fill(k: int) -> None:
        _tok, (oid, acc, _) = plan[k]
        r = order_fill_maker_cross(
            order_id=oid, account_id=acc, trigger_key=f"bench:{k}:{oid}", top=tops[k]
        )
        if r.outcome != "filled":
            raise SystemExit(f"fill {k}: {r}")

    for k in range(warmup):
        fill(k)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    # Inside functools.reduce, which nothing on the fill path calls: under callgrind,
    # `--collect-atstart=no --toggle-collect=functools_reduce` counts these fills only.
    functools.reduce(lambda _, k: fill(k), range(warmup, warmup + fills), None)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    connection.close()
    return {
        "fills": fills,
        "cpu_us_per_fill": cpu / fills * 1e6 if fills else 0.0,
        "wall_us_per_fill": wall / fills * 1e6 if fills else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seed", action="store_true", help="(re)build the template database")
    p.add_argument("--orders", type=int, default=10_000)
    p.add_argument("--tokens", type=int, default=2_000)
    p.add_argument("--accounts", type=int, default=1_000)
    p.add_argument("--fills", type=int, default=400)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--db", default=DEFAULT_DB)
    p.add_argument("--redis", default=DEFAULT_REDIS)
    args = p.parse_args(argv)
    os.environ.setdefault("MATCHER_WORKERS", "1")
    if args.seed:
        make_template(
            db_url=args.db,
            redis_url=args.redis,
            orders=args.orders,
            tokens=args.tokens,
            accounts=args.accounts,
        )
        return 0
    print(
        measure(
            db_url=args.db,
            redis_url=args.redis,
            accounts=args.accounts,
            fills=args.fills,
            warmup=args.warmup,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
