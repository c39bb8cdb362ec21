#!/usr/bin/env python
"""Trader web UI benchmark (issue #5), measured in a real browser (headless Debian Chromium
through Playwright) against gunicorn on PostgreSQL with the Redis price bus, 2,000 markets
loaded.

Usage:
    .venv/bin/python bench/web_ui.py                 # full run (~2 min); rewrites the
                                                     # "Trader web UI (issue #5)" section of
                                                     # docs/benchmarks.md
    .venv/bin/python bench/web_ui.py --quick         # smoke run, docs untouched
    .venv/bin/python bench/web_ui.py --help

Needs PostgreSQL (user postgres, trust auth), Redis on 127.0.0.1 and Chromium at
/usr/bin/chromium (or --chromium). The script drops and recreates the database given by
--db (default polysim_h_webmarkets), flushes the Redis DB given by --redis-db (default 8), starts
its own gunicorn on a 127.0.0.1 port and always stops it. All traffic stays on 127.0.0.1.

What it measures:
  1. feed → visible: the market page is open in Chromium; this process publishes a changed
     book for one of its outcomes on the price bus (what the ingester does on every websocket
     message) and the page timestamps, at the next animation frame after the DOM shows the
     new size, with the same wall clock. N updates, spaced at random so their phase against
     the page's poll is random. The ingester's own latency (websocket → bus) is
     bench/feed.py's subject, not this one's.
  2. server time of the market page, the market list and the bare baseline view, from the
     browser's Navigation Timing (responseStart − requestStart: gunicorn, Django, the queries
     and the bus read, plus the loopback hop) over N loads each, interleaved in one loop so
     they share the machine's state; Django's own view time from the Server-Timing header.
  3. the live-book poll: every fragment request the page made during (1), from Resource
     Timing (204 = unchanged, 200 = swapped).
  4. an in-process census of SQL queries per request (CaptureQueriesContext).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import random
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import code_version, write_docs_section  # noqa: E402
from bench.partner_api import (  # noqa: E402
    foreign_load,
    percentile,
    start_gunicorn,
    stop_gunicorn,
    wait_quiet,
    wait_ready,
)

SECTION_TITLE = "## Trader web UI (issue #5)"
PG_BASE = "postgres://postgres@127.0.0.1:5432"
CATEGORIES = ("Politics", "Crypto", "Sports", "Economics", "Science", "Culture", "Weather")
TARGET_FEED_P99_MS = 1000.0
TARGET_PAGE_P99_MS = 100.0


# --- setup ------------------------------------------------------------------------------------
def recreate_database(db: str) -> None:
    import psycopg

    with psycopg.connect(f"{PG_BASE}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {db}")


def django_setup() -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings_bench"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


@dataclass
class Seed:
    markets: list[str]  # condition ids
    tokens: dict[str, tuple[str, str]]  # condition id -> (yes token, no token)
    account_id: str


def _levels(rng: random.Random, mid: Decimal) -> tuple[list[list[str]], list[list[str]]]:
    tick = Decimal("0.01")
    bids = [[str(mid - tick * (i + 1)), str(rng.randint(10, 5000))] for i in range(10)]
    asks = [[str(mid + tick * (i + 1)), str(rng.randint(10, 5000))] for i in range(10)]
    return [b for b in bids if Decimal(b[0]) > 0], [a for a in asks if Decimal(a[0]) < 1]


def make_top(token_id: str, market: str, bids: list[list[str]], asks: list[list[str]]) -> Any:
    from marketdata.bus import BookTop, mid_spread, now_ms

    best_bid = bids[0][0] if bids else None
    best_ask = asks[0][0] if asks else None
    mid = spread = None
    if best_bid and best_ask:
        mid, spread = mid_spread(best_bid, best_ask)
    return BookTop(
        token_id,
        market,
        best_bid,
        best_ask,
        mid,
        spread,
        mid,
        "BUY",
        "0.01",
        now_ms(),
        f"bench{now_ms()}",
        True,
        bids,
        asks,
        now_ms(),
    )


def seed(n_markets: int, rng: random.Random) -> Seed:
    """n synthetic markets (2 tokens each) and their books on the bus, one funded account."""
    from django.utils import timezone

    from accounts.models import User
    from accounts.services.wallets import account_open
    from marketdata.bus import get_bus
    from marketdata.models import Event, Market, Token

    now = timezone.now()
    events = Event.objects.bulk_create(
        Event(gamma_id=f"bench-ev-{i}", slug=f"bench-event-{i}", title=f"Bench event {i}")
        for i in range(n_markets // 4)
    )
    markets = Market.objects.bulk_create(
        Market(
            event=events[i % len(events)],
            condition_id=f"0xbench{i:06d}",
            gamma_id=f"bench-{i}",
            question=f"Will synthetic benchmark question {i} resolve Yes?",
            slug=f"bench-question-{i}",
            category=CATEGORIES[i % len(CATEGORIES)],
            tick_size=Decimal("0.01"),
            min_order_size=Decimal("5"),
            accepting_orders=True,
            end_date=now + dt.timedelta(days=rng.randint(1, 400)),
            volume=Decimal(rng.randint(100, 5_000_000)),
            volume_24hr=Decimal(rng.randint(0, 100_000)),
            status="open" if i % 20 else rng.choice(("closed", "resolved")),
        )
        for i in range(n_markets)
    )
    tokens = Token.objects.bulk_create(
        Token(market=m, token_id=f"{9_000_000 + i * 2 + k}", outcome=("Yes", "No")[k], index=k)
        for i, m in enumerate(markets)
        for k in (0, 1)
    )
    by_market: dict[str, tuple[str, str]] = {}
    tops = []
    for i, m in enumerate(markets):
        yes, no = tokens[2 * i], tokens[2 * i + 1]
        by_market[m.condition_id] = (yes.token_id, no.token_id)
        mid = Decimal(rng.randint(5, 95)) / 100
        bids, asks = _levels(rng, mid)
        tops.append(make_top(yes.token_id, m.condition_id, bids, asks))
        nbids = [[str(1 - Decimal(p)), s] for p, s in asks]
        nasks = [[str(1 - Decimal(p)), s] for p, s in bids]
        tops.append(make_top(no.token_id, m.condition_id, nbids, nasks))
    bus = get_bus()
    for start in range(0, len(tops), 500):
        bus.publish(tops[start : start + 500])
    user = User.objects.create_user("bench-web@example.com")
    account = account_open(
        owner=user, tenant=None, external_id=None, stage=None, starting_balance=Decimal("1000")
    )
    open_ids = [m.condition_id for m in markets if m.status == "open"]
    return Seed(markets=open_ids, tokens=by_market, account_id=str(account.pk))


class Heartbeat:
    """What a running feed does every second: beat every shard, so books read as live."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from marketdata.bus import get_bus

        bus = get_bus()
        while not self._stop.is_set():
            for shard in range(bus.n_shards):
                bus.heartbeat(shard)
            self._stop.wait(1.0)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# --- census ------------------------------------------------------------------------------------
def query_census(s: Seed) -> dict[str, int]:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    cid = s.markets[0]
    paths = {
        "market page": f"/markets/{cid}/",
        "market list": "/markets/",
        "book fragment": f"/markets/{cid}/book",
        "bare baseline": f"/bench/bare/{s.account_id}",
    }
    out = {}
    for name, path in paths.items():
        client.get(path)  # warm caches (categories)
        with CaptureQueriesContext(connection) as ctx:
            response = client.get(path)
        assert response.status_code == 200, (path, response.status_code)
        out[name] = len(ctx)
    return out


# --- browser -------------------------------------------------------------------------------------
OBSERVER_JS = """
() => {
  window.__target = null; window.__seenAt = null;
  const check = () => {
    if (window.__target === null || window.__seenAt !== null) return;
    const cell = document.querySelector('[data-testid=book-0] .bid [data-testid=level-size]');
    if (cell && cell.textContent.trim() === window.__target) {
      window.__seenAt = -1;
      requestAnimationFrame(() => { window.__seenAt = Date.now(); });
    }
  };
  new MutationObserver(check).observe(document.querySelector('.book-card'),
    {childList: true, subtree: true, characterData: true});
}
"""

NAV_JS = """
() => {
  const n = performance.getEntriesByType('navigation')[0];
  const st = (n.serverTiming || []).find(s => s.name === 'view');
  return [n.responseStart - n.requestStart, st ? st.duration : null, n.responseStatus || 0];
}
"""

POLLS_JS = """
() => performance.getEntriesByType('resource')
  .filter(e => e.name.includes('/book?'))
  .map(e => [e.responseStart - e.requestStart, e.responseStatus || 0, e.transferSize])
"""


@dataclass
class Report:
    n_markets: int
    feed_ms: list[float] = field(default_factory=list)
    nav: dict[str, list[float]] = field(default_factory=dict)
    view: dict[str, list[float]] = field(default_factory=dict)
    polls: list[list[float]] = field(default_factory=list)
    census: dict[str, int] = field(default_factory=dict)
    machine: dict[str, str] = field(default_factory=dict)
    poll_ms: int = 0
    workers: int = 2
    foreign_before: float = math.nan  # cores other users of the machine took, before
    foreign_after: float = math.nan  # … and right after the run


def measure_feed(page: Any, s: Seed, base: str, updates: int, rng: random.Random) -> list[float]:
    from marketdata.bus import get_bus, now_ms

    cid = s.markets[len(s.markets) // 2]
    yes, _ = s.tokens[cid]
    page.goto(f"{base}/markets/{cid}/")
    page.evaluate("performance.setResourceTimingBufferSize(100000)")
    page.evaluate(OBSERVER_JS)
    bus = get_bus()
    out = []
    base_bids, asks = _levels(rng, Decimal("0.50"))
    for i in range(updates):
        size = 10_000 + i
        bids = [[base_bids[0][0], str(size)], *base_bids[1:]]
        target = f"{size:,}"
        page.evaluate("t => { window.__target = t; window.__seenAt = null; }", target)
        sent = now_ms()
        bus.publish([make_top(yes, cid, bids, asks)])
        page.wait_for_function("window.__seenAt !== null && window.__seenAt > 0", timeout=10_000)
        seen = page.evaluate("window.__seenAt")
        out.append(float(seen - sent))
        time.sleep(rng.uniform(0.05, 0.6))
    return out


def measure_pages(page: Any, s: Seed, base: str, loads: int, rng: random.Random) -> Report:
    report = Report(n_markets=0)
    kinds = ("market page", "market list", "bare baseline")
    for k in kinds:
        report.nav[k] = []
        report.view[k] = []
    for i in range(loads + 20):
        for kind in kinds:
            if kind == "market page":
                url = f"{base}/markets/{rng.choice(s.markets)}/"
            elif kind == "market list":
                url = f"{base}/markets/" + ("" if i % 2 else "?q=question+1&sort=ending_soon")
            else:
                url = f"{base}/bench/bare/{s.account_id}"
            # "load": the page's own subresources are done before the next navigation, so
            # one load never queues behind the previous one's.
            page.goto(url, wait_until="load")
            nav_ms, view_ms, status = page.evaluate(NAV_JS)
            if status not in (0, 200):
                raise RuntimeError(f"{url} answered {status}")
            if i >= 20:  # warm-up excluded
                report.nav[kind].append(float(nav_ms))
                if view_ms is not None:
                    report.view[kind].append(float(view_ms))
    return report


# --- report --------------------------------------------------------------------------------------
def machine_info(redis_url: str) -> dict[str, str]:
    import django
    import psycopg
    import redis

    with psycopg.connect(f"{PG_BASE}/postgres") as conn:
        row = conn.execute("SHOW server_version").fetchone()
    chromium = subprocess.run(
        [ARGS_CHROMIUM[0], "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpus": str(len(os.sched_getaffinity(0))),
        "python": platform.python_version(),
        "django": django.get_version(),
        "psycopg": psycopg.__version__,
        "postgres": str(row[0]).split()[0] if row else "?",
        "redis": str(redis.Redis.from_url(redis_url).info("server").get("redis_version", "?")),
        "chromium": chromium or "?",
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "code": code_version(),
    }


ARGS_CHROMIUM = ["/usr/bin/chromium"]


def _f(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.1f}"


def render(r: Report) -> str:
    m = r.machine
    feed_p50, feed_p99 = percentile(r.feed_ms, 50), percentile(r.feed_ms, 99)
    base_p50 = percentile(r.nav["bare baseline"], 50)
    page_p99 = percentile(r.nav["market page"], 99)
    lines = [
        SECTION_TITLE,
        "",
        f"`bench/web_ui.py`, {dt.date.today().isoformat()}, {m['code']}. Headless "
        f"{m['chromium']} through Playwright against gunicorn ({r.workers} sync workers, "
        f"`bench.settings_bench`) on PostgreSQL {m['postgres']} with the Redis {m['redis']} "
        f"price bus; {r.n_markets:,} synthetic markets (2 outcomes each, 10 levels per side on "
        f"the bus). Machine: {m['cpus']} CPUs shared with the browser, the database and the "
        f"load; other work on the machine took {r.foreign_before:.2f} cores just before the "
        f"run and {r.foreign_after:.2f} just after (load average at the end {m['loadavg']}); "
        f"Python {m['python']}, Django {m['django']}.",
        "",
        "| what | n | p50 ms | p90 ms | p99 ms | max ms | p50 ÷ baseline p50 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def row(name: str, values: list[float]) -> str:
        p50 = percentile(values, 50)
        ratio = p50 / base_p50 if base_p50 and not math.isnan(p50) else math.nan
        return (
            f"| {name} | {len(values)} | {_f(p50)} | {_f(percentile(values, 90))} | "
            f"{_f(percentile(values, 99))} | {_f(max(values) if values else math.nan)} | "
            f"{'n/a' if math.isnan(ratio) else f'{ratio:.2f}×'} |"
        )

    lines.append(row("feed publish → book visible in the page", r.feed_ms))
    for kind in ("market page", "market list", "bare baseline"):
        lines.append(row(f"{kind}: server time (Navigation Timing)", r.nav[kind]))
    for kind in ("market page", "market list"):
        lines.append(row(f"{kind}: Django view time (Server-Timing)", r.view[kind]))
    polls_ok = [p[0] for p in r.polls if p[1] == 200]
    polls_skip = [p[0] for p in r.polls if p[1] == 204]
    lines.append(row("book poll answered 204 (unchanged): server time", polls_skip))
    lines.append(row("book poll answered 200 (swapped): server time", polls_ok))
    lines += [
        "",
        "SQL queries per request (in-process census): "
        + ", ".join(f"{k} {v}" for k, v in r.census.items())
        + ".",
        "",
        f"Live book: the page polls a fragment every {r.poll_ms} ms (htmx); the fragment "
        "answers 204 while the book's digest is unchanged, so an idle book costs no DOM work. "
        "Polling, not server-sent events, because the web tier is gunicorn's sync workers: an "
        "open event stream would hold a worker per open market page. The figure above is the "
        "full path a trader sees: bus publish → next poll → Django → swap → next frame; the "
        "poll interval bounds it (expected ≈ interval/2 + server time on average).",
        "",
        "Verdicts against the issue's targets:",
        "",
        f"- feed update → visible book change p99 {_f(feed_p99)} ms (p50 {_f(feed_p50)}) "
        f"{'<' if feed_p99 < TARGET_FEED_P99_MS else '≥'} {TARGET_FEED_P99_MS:.0f} ms: "
        f"{'met' if feed_p99 < TARGET_FEED_P99_MS else 'NOT met'}.",
        f"- market page server time p99 {_f(page_p99)} ms with {r.n_markets:,} markets "
        f"{'<' if page_p99 < TARGET_PAGE_P99_MS else '≥'} {TARGET_PAGE_P99_MS:.0f} ms: "
        f"{'met' if page_p99 < TARGET_PAGE_P99_MS else 'NOT met'}.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--markets", type=int, default=2000)
    p.add_argument("--updates", type=int, default=60, help="feed updates timed (≥ 50)")
    p.add_argument("--loads", type=int, default=200, help="page loads timed per kind (≥ 200)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--db", default="polysim_h_webmarkets")
    p.add_argument("--redis-db", type=int, default=8)
    p.add_argument("--port", type=int, default=18390)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="small run, docs untouched")
    p.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.updates, args.loads, args.no_write = 10, 20, True
    ARGS_CHROMIUM[0] = args.chromium
    rng = random.Random(args.seed)
    redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
    db_url = f"{PG_BASE}/{args.db}"
    os.environ.update(DATABASE_URL=db_url, REDIS_URL=redis_url, DEBUG="0")
    os.environ.setdefault("SECRET_KEY", "bench-" + secrets.token_urlsafe(32))
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    recreate_database(args.db)
    django_setup()
    from web.markets.views import BOOK_POLL_MS

    print(f"seeding {args.markets} markets…", flush=True)
    s = seed(args.markets, rng)
    report = Report(n_markets=args.markets, poll_ms=BOOK_POLL_MS, workers=args.workers)
    beat = Heartbeat().start()
    try:
        report.census = query_census(s)
        # The chart's price history comes from the CLOB: a local fake Polymarket answers it
        # (unknown tokens get an empty history), so no request leaves the machine.
        from devtools.fakepoly import FakePolymarket

        fake = FakePolymarket(port=args.port + 1).start_in_thread()
        env = {
            **os.environ,
            "POLYMARKET_CLOB_URL": fake.clob_url,
            "POLYMARKET_GAMMA_URL": fake.gamma_url,
            "POLYMARKET_WS_URL": fake.ws_url,
            "DJANGO_SETTINGS_MODULE": "bench.settings_bench",
            "DATABASE_URL": db_url,
            "REDIS_URL": redis_url,
            "ALLOWED_HOSTS": "127.0.0.1",
        }
        log = Path(tempfile.gettempdir()) / "polysim-bench-web-gunicorn.log"
        print("waiting for a quiet machine (at most 90 s)…", flush=True)
        report.foreign_before = wait_quiet(90.0)
        server = start_gunicorn(args.port, args.workers, env, log)
        try:
            wait_ready(server, args.port, f"/bench/bare/{s.account_id}", 60)
            base = f"http://127.0.0.1:{args.port}"
            from playwright.sync_api import sync_playwright

            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "1"  # ORM and bus calls between steps
            with sync_playwright() as pw:
                browser = pw.chromium.launch(
                    executable_path=args.chromium,
                    headless=True,
                    args=["--no-sandbox", "--disable-dev-shm-usage"],
                )
                page = browser.new_page(viewport={"width": 1366, "height": 900})
                print(f"feed → visible: {args.updates} updates…", flush=True)
                report.feed_ms = measure_feed(page, s, base, args.updates, rng)
                report.polls = page.evaluate(POLLS_JS)
                print(f"page loads: {args.loads} × 3 kinds…", flush=True)
                timed = measure_pages(page, s, base, args.loads, rng)
                report.nav, report.view = timed.nav, timed.view
                browser.close()
        finally:
            stop_gunicorn(server)
            fake.stop()
        report.foreign_after = foreign_load(2.0)
    finally:
        beat.stop()
    report.machine = machine_info(redis_url)
    section = render(report)
    print(section)
    if not args.no_write:
        write_docs_section(SECTION_TITLE, section)
        print(f"wrote {SECTION_TITLE!r} to docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
