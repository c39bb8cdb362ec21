#!/usr/bin/env python
"""Partner API benchmark (issue #2): GET /v1/partner/accounts/{id} and POST /v1/partner/users
under gunicorn (2 sync workers) on PostgreSQL, against a bare Django view doing one indexed
read, all measured in the same run on the same machine.

Usage:
    make bench                                   # full run (~2 min); rewrites the
                                                 # "Partner API (issue #2)" section of
                                                 # docs/benchmarks.md
    .venv/bin/python bench/partner_api.py --quick             # smoke run, docs untouched
    .venv/bin/python bench/partner_api.py --duration 5 --no-write
    .venv/bin/python bench/partner_api.py --help

Needs PostgreSQL (user postgres, trust auth) and Redis on 127.0.0.1. The script drops and
recreates the database `polysim_bench`, flushes Redis DB 9, starts its own gunicorn on a free
127.0.0.1 port and always stops it. All traffic stays on 127.0.0.1.

What it does:
  1. fresh `polysim_bench`, `migrate`, seed: one tenant with limits the run cannot reach (so
     the limiter takes its real Redis path but never rejects), one full-scope key, N traders
     each with one account (partners.services, the same code path as the API);
  2. an in-process census: SQL queries per request (CaptureQueriesContext) for each endpoint;
  3. gunicorn `config.wsgi:application --workers 2` with DJANGO_SETTINGS_MODULE=
     bench.settings_bench (production settings + the bare view's URL, DEBUG off),
     DATABASE_URL -> polysim_bench, REDIS_URL -> Redis DB 9;
  4. per endpoint: warm-up, then closed-loop throughput (C connections for D seconds), then
     open-loop latency at a fixed rate (send times scheduled in advance; latency counted from
     the scheduled time, so a stalled server cannot hide queueing: no coordinated omission);
  5. a table on stdout and, unless --no-write/--quick, the docs section.

The load generator runs in this process and shares the machine's cores with gunicorn,
PostgreSQL and Redis; its own CPU cost per request is measured and reported.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import math
import os
import platform
import re
import secrets
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Protocol

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import DOCS, code_version, write_docs_section  # noqa: E402

DB_NAME = "polysim_bench"
REDIS_DB = 9
SECTION_TITLE = "## Partner API (issue #2)"

# Throughput goal: the envelope at >= 50 % of the bare view; latency goal: p99 < 50 ms at the
# open-loop rate (200 requests/s by default).
GOAL_RATIO = 0.50
GOAL_P99_MS = 50.0

REQUEST_TIMEOUT_S = 10.0
MAX_IN_FLIGHT = 512


# --- Endpoints --------------------------------------------------------------------------------
@dataclass
class Endpoint:
    name: str  # short id used in tables
    label: str  # what the table shows
    method: str
    expected: int  # the status a correct answer has (others still count as ok if 2xx)
    next_request: Callable[[], tuple[str, bytes | None]]  # -> (path, body)
    reference: bool = False  # context only: closed loop, no open-loop phase, no goal


@dataclass
class Seed:
    raw_key: str
    account_ids: list[str]
    replay_pairs: list[tuple[str, str]]  # (external_id, email) already registered


def build_endpoints(seed: Seed, run_tag: str) -> list[Endpoint]:
    accounts = itertools.cycle(seed.account_ids)
    bare_accounts = itertools.cycle(seed.account_ids)
    replays = itertools.cycle(seed.replay_pairs)
    counter = itertools.count()

    def bare() -> tuple[str, bytes | None]:
        return f"/bench/bare/{next(bare_accounts)}", None

    def account_get() -> tuple[str, bytes | None]:
        return f"/v1/partner/accounts/{next(accounts)}", None

    def user_new() -> tuple[str, bytes | None]:
        ext = f"bench-{run_tag}-{next(counter)}"
        body = {"external_id": ext, "email": f"{ext}@example.com", "metadata": {"src": "bench"}}
        return "/v1/partner/users", json.dumps(body).encode()

    def user_replay() -> tuple[str, bytes | None]:
        ext, email = next(replays)
        return "/v1/partner/users", json.dumps({"external_id": ext, "email": email}).encode()

    return [
        Endpoint("bare", "bare view (1 indexed read)", "GET", 200, bare),
        Endpoint("account_get", "GET /v1/partner/accounts/{id}", "GET", 200, account_get),
        Endpoint("user_new", "POST /v1/partner/users (new)", "POST", 201, user_new),
        Endpoint("user_replay", "POST /v1/partner/users (replay)", "POST", 200, user_replay),
        Endpoint(
            "whoami",
            "GET /v1/partner/whoami (reference: key + limiter + DRF, no SQL)",
            "GET",
            200,
            lambda: ("/v1/partner/whoami", None),
            reference=True,
        ),
    ]


# --- HTTP clients -----------------------------------------------------------------------------
class RawClient:
    """Minimal HTTP/1.1 client on asyncio streams: keep-alive when the server allows it (a
    gunicorn sync worker answers `Connection: close`, so there it reconnects per request).
    Far less CPU per request than httpx, which matters when it shares two cores with the
    server under test."""

    def __init__(self, host: str, port: int, api_key: str, pool_size: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.pool = asyncio.Semaphore(pool_size)
        self.base_headers = (
            f"Host: {host}:{port}\r\nX-API-Key: {api_key}\r\nAccept: application/json\r\n"
        )

    async def request(self, method: str, path: str, body: bytes | None) -> int:
        head = f"{method} {path} HTTP/1.1\r\n{self.base_headers}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        payload = (head + "\r\n").encode() + (body or b"")
        async with self.pool:
            if self.idle:
                reader, writer = self.idle.pop()
            else:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            try:
                writer.write(payload)
                status, keep = await self._read_response(reader)
            except BaseException:
                writer.close()
                raise
            if keep:
                self.idle.append((reader, writer))
            else:
                writer.close()
            return status

    @staticmethod
    async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status_text = lines[0].split(" ", 2)[:2]
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip().lower()
        if "content-length" in headers:
            await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            await reader.read()
            return int(status_text), False
        keep = version == "HTTP/1.1" and headers.get("connection") != "close"
        return int(status_text), keep

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


class HttpxClient:
    """httpx.AsyncClient, HTTP/1.1 with a keep-alive pool (kept for comparison: --client)."""

    def __init__(self, host: str, port: int, api_key: str, pool_size: int) -> None:
        import httpx

        self.client = httpx.AsyncClient(
            base_url=f"http://{host}:{port}",
            headers={"X-API-Key": api_key, "Accept": "application/json"},
            limits=httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size),
            timeout=REQUEST_TIMEOUT_S,
        )

    async def request(self, method: str, path: str, body: bytes | None) -> int:
        headers = {"Content-Type": "application/json"} if body is not None else None
        response = await self.client.request(method, path, content=body, headers=headers)
        return response.status_code

    async def close(self) -> None:
        await self.client.aclose()


Client = RawClient | HttpxClient


# --- CPU accounting ---------------------------------------------------------------------------
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0.0


def _procs() -> Iterator[tuple[int, str, int]]:
    """(pid, comm, ppid) of every process."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        ppid = int(raw.rsplit(")", 1)[1].split()[1])
        yield int(entry), comm, ppid


def _machine_busy() -> float:
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    return (sum(parts[:8]) - idle) / CLK_TCK


@dataclass
class CpuSample:
    """Cumulative CPU seconds per process at one instant, grouped by who the process is."""

    wall: float
    client: float
    groups: dict[str, dict[int, float]]  # "gunicorn" | "postgres" | "redis" -> pid -> seconds
    machine: float


def cpu_sample(gunicorn_pid: int | None) -> CpuSample:
    groups: dict[str, dict[int, float]] = {"gunicorn": {}, "postgres": {}, "redis": {}}
    for pid, comm, ppid in _procs():
        if gunicorn_pid is not None and (pid == gunicorn_pid or ppid == gunicorn_pid):
            groups["gunicorn"][pid] = _proc_cpu(pid)
        elif comm == "postgres":
            groups["postgres"][pid] = _proc_cpu(pid)
        elif comm.startswith("redis-server"):
            groups["redis"][pid] = _proc_cpu(pid)
    return CpuSample(
        wall=time.monotonic(), client=time.process_time(), groups=groups, machine=_machine_busy()
    )


def _group_delta(a: dict[int, float], b: dict[int, float]) -> float:
    """CPU used between two samples by the processes alive at the second one (a process that
    started in between counts from zero; one that exited in between is not counted)."""
    return sum(max(0.0, cpu - a.get(pid, 0.0)) for pid, cpu in b.items())


@dataclass
class CpuUse:
    """CPU seconds used during measured phases, by consumer, and the requests they served."""

    client: float = 0.0
    gunicorn: float = 0.0
    postgres: float = 0.0
    redis: float = 0.0
    machine: float = 0.0  # all busy CPU on the machine
    wall: float = 0.0
    requests: int = 0

    def add(self, a: CpuSample, b: CpuSample, requests: int) -> None:
        self.client += b.client - a.client
        self.gunicorn += _group_delta(a.groups["gunicorn"], b.groups["gunicorn"])
        self.postgres += _group_delta(a.groups["postgres"], b.groups["postgres"])
        self.redis += _group_delta(a.groups["redis"], b.groups["redis"])
        self.machine += b.machine - a.machine
        self.wall += b.wall - a.wall
        self.requests += requests

    @property
    def other(self) -> float:
        """Busy CPU not accounted to the benchmark's processes: other users of the machine,
        plus kernel work (softirq) not charged to any process."""
        return max(0.0, self.machine - self.client - self.gunicorn - self.postgres - self.redis)

    def per_request_ms(self, seconds: float) -> float:
        return seconds * 1000 / max(self.requests, 1)

    def cores(self, seconds: float) -> float:
        return seconds / self.wall if self.wall else math.nan


# --- Load generation --------------------------------------------------------------------------
@dataclass
class Tally:
    """Everything measured for one endpoint in one mode, summed over its phases."""

    endpoint: str
    mode: str  # "closed" | "open"
    target_rate: float | None = None
    duration_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0  # non-2xx, transport errors, timeouts, dropped sends
    error_kinds: Counter[str] = field(default_factory=Counter)
    cpu: CpuUse = field(default_factory=CpuUse)

    @property
    def completed(self) -> int:
        return len(self.latencies_ms)

    @property
    def throughput(self) -> float:
        return self.completed / self.duration_s if self.duration_s else math.nan

    def pct(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def record(self, status: int | None, err: str | None, latency_ms: float) -> None:
        if status is not None:
            self.statuses[status] += 1
        if err:
            self.errors += 1
            self.error_kinds[err] += 1
        else:
            self.latencies_ms.append(latency_ms)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


async def _send(client: Client, ep: Endpoint) -> tuple[int | None, str | None]:
    """(status, error kind or None)."""
    path, body = ep.next_request()
    try:
        status = await asyncio.wait_for(
            client.request(ep.method, path, body), timeout=REQUEST_TIMEOUT_S
        )
    except TimeoutError:
        return None, "timeout"
    except Exception as exc:  # transport errors (OSError, IncompleteReadError, httpx.*)
        return None, type(exc).__name__
    return status, None if 200 <= status < 300 else f"HTTP {status}"


async def closed_rounds(
    client: Client,
    endpoints: list[Endpoint],
    *,
    args: argparse.Namespace,
    gunicorn_pid: int,
    closed: dict[str, Tally],
    rounds: list[dict[str, float]],
    warmups: dict[str, Tally],
) -> None:
    """Warm every endpoint up, then `args.rounds` rounds of `args.duration / args.rounds`
    seconds per endpoint, the order rotating each round so every endpoint (the baseline
    included) meets the same machine conditions. Tallies accumulate into `closed`/`warmups`
    by endpoint name; each round's rates are appended to `rounds`."""
    for ep in endpoints:
        print(f"warm-up {ep.name} ({args.warmup:g}s)", flush=True)
        await closed_loop(
            client, ep, concurrency=args.concurrency, duration=args.warmup,
            gunicorn_pid=None, tally=warmups.setdefault(ep.name, Tally(ep.name, "warm-up")),
        )  # fmt: skip
    slice_s = args.duration / args.rounds
    for r in range(args.rounds):
        order = endpoints[r % len(endpoints) :] + endpoints[: r % len(endpoints)]
        per_round: dict[str, float] = {}
        for ep in order:
            tally = closed.setdefault(ep.name, Tally(ep.name, "closed"))
            per_round[ep.name] = await closed_loop(
                client, ep, concurrency=args.concurrency, duration=slice_s,
                gunicorn_pid=gunicorn_pid, tally=tally,
            )  # fmt: skip
            await asyncio.sleep(0.2)
        rounds.append(per_round)
        rates = ", ".join(f"{k} {v:.0f}/s" for k, v in per_round.items())
        print(f"closed loop round {r + 1}/{args.rounds}: {rates}", flush=True)


async def closed_loop(
    client: Client,
    ep: Endpoint,
    *,
    concurrency: int,
    duration: float,
    gunicorn_pid: int | None,
    tally: Tally,
) -> float:
    """`concurrency` connections, each sending its next request as soon as the previous one
    is answered, for `duration` seconds. Adds to `tally`; returns this phase's requests/s."""
    deadline = time.monotonic() + duration
    done_before = tally.completed

    async def worker() -> None:
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            status, err = await _send(client, ep)
            tally.record(status, err, (time.perf_counter() - t0) * 1000)

    errors_before = tally.errors
    before = cpu_sample(gunicorn_pid)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    after = cpu_sample(gunicorn_pid)
    wall = after.wall - before.wall
    done = tally.completed - done_before
    tally.duration_s += wall
    tally.cpu.add(before, after, done + tally.errors - errors_before)
    return done / wall


async def open_loop(
    client: Client,
    ep: Endpoint,
    *,
    rate: float,
    duration: float,
    gunicorn_pid: int | None,
    tally: Tally,
) -> None:
    """Send at fixed, pre-scheduled times whatever the previous requests are doing; latency
    runs from the scheduled send time, so a late generator or a queueing server both count
    against the result instead of hiding it (no coordinated omission)."""
    loop = asyncio.get_running_loop()
    in_flight = 0
    errors_before = tally.errors
    done_before = tally.completed

    async def one(scheduled: float) -> None:
        nonlocal in_flight
        status, err = await _send(client, ep)
        in_flight -= 1
        tally.record(status, err, (loop.time() - scheduled) * 1000)

    before = cpu_sample(gunicorn_pid)
    start = loop.time() + 0.02
    tasks = []
    for i in range(int(rate * duration)):
        scheduled = start + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if in_flight >= MAX_IN_FLIGHT:
            tally.record(None, "dropped (too many in flight)", 0.0)
            continue
        in_flight += 1
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    after = cpu_sample(gunicorn_pid)
    tally.duration_s += after.wall - before.wall
    tally.cpu.add(before, after, tally.completed - done_before + tally.errors - errors_before)


def foreign_load(seconds: float) -> float:
    """Busy cores on the machine over `seconds`, excluding this process (call it before the
    server starts: it is what other users of the machine are taking)."""
    a_machine, a_self = _machine_busy(), time.process_time()
    time.sleep(seconds)
    return max(0.0, (_machine_busy() - a_machine) - (time.process_time() - a_self)) / seconds


def wait_quiet(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (at most `max_wait` s) until other processes use under `threshold` cores for a
    whole second; return the last measured foreign load."""
    deadline = time.monotonic() + max_wait
    load = foreign_load(1.0)
    while load >= threshold and time.monotonic() < deadline:
        print(f"  machine busy with other work ({load:.2f} cores); waiting", flush=True)
        load = foreign_load(1.0)
    return load


# --- Database, seed, census -------------------------------------------------------------------
def recreate_database(pg_base: str) -> None:
    import psycopg

    with psycopg.connect(f"{pg_base}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")


def django_setup(settings_module: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
    import django

    django.setup()


def migrate() -> None:
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


def seed_data(n_accounts: int) -> Seed:
    from django.db import connection, transaction

    from partners import services

    with transaction.atomic():
        tenant = services.tenant_create(
            slug="bench",
            name="Benchmark firm",
            rate_limit_per_second=1_000_000,
            rate_limit_per_minute=60_000_000,
        )
        issued = services.apikey_create(tenant=tenant, name="bench")
        account_ids: list[str] = []
        pairs: list[tuple[str, str]] = []
        for i in range(n_accounts):
            ext, email = f"seed-{i}", f"seed-{i}@example.com"
            mapping, _ = services.trader_register(tenant=tenant, external_id=ext, email=email)
            account, _ = services.partner_account_open(
                tenant=tenant,
                user_id=mapping.user_id,
                external_id=f"acct-{i}",
                stage="challenge",
                starting_balance=Decimal("10000.00"),
            )
            account_ids.append(str(account.pk))
            pairs.append((ext, email))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    connection.close()
    return Seed(raw_key=issued.raw_key, account_ids=account_ids, replay_pairs=pairs)


@dataclass
class Census:
    queries: dict[str, int]
    queries_cold_key: dict[str, int]
    sql: dict[str, list[str]]


def query_census(seed: Seed, endpoints: list[Endpoint]) -> Census:
    """SQL statements per request, in process (Django test client, same settings), after one
    warm-up request (API key cached, as in steady state) and with a cold key cache.
    CaptureQueriesContext sees statements sent through Django's cursor wrapper plus
    BEGIN/COMMIT; not the connection health check, which the test client does not trigger."""
    from django.db import connection
    from django.test import Client as DjangoClient
    from django.test.utils import CaptureQueriesContext

    from partners import keys

    client = DjangoClient(HTTP_X_API_KEY=seed.raw_key)

    def call(ep: Endpoint) -> int:
        path, body = ep.next_request()
        if ep.method == "GET":
            response = client.get(path)
        else:
            response = client.post(path, data=body, content_type="application/json")
        if response.status_code != ep.expected:
            raise RuntimeError(f"census: {ep.name} answered {response.status_code}")
        return response.status_code

    warm: dict[str, int] = {}
    cold: dict[str, int] = {}
    sql: dict[str, list[str]] = {}
    for ep in endpoints:
        call(ep)
        with CaptureQueriesContext(connection) as ctx:
            call(ep)
        warm[ep.name] = len(ctx.captured_queries)
        sql[ep.name] = [q["sql"] for q in ctx.captured_queries]
        keys.key_cache.clear()
        with CaptureQueriesContext(connection) as ctx:
            call(ep)
        cold[ep.name] = len(ctx.captured_queries)
    connection.close()
    return Census(queries=warm, queries_cold_key=cold, sql=sql)


# --- gunicorn ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gunicorn(
    port: int, workers: int, env: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "gunicorn", "config.wsgi:application",
        "--workers", str(workers), "--bind", f"127.0.0.1:{port}",
        "--chdir", str(ROOT), "--log-level", "warning", "--timeout", "60",
    ]  # fmt: skip
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(server: subprocess.Popen[bytes], port: int, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {server.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(request)
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("gunicorn did not answer in time")


def stop_gunicorn(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


# --- Machine description ----------------------------------------------------------------------
def machine_info(pg_base: str, redis_url: str) -> dict[str, str]:
    import django
    import gunicorn
    import psycopg
    import redis

    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    with psycopg.connect(f"{pg_base}/postgres") as conn:
        row = conn.execute("SHOW server_version").fetchone()
        pg_version = str(row[0]) if row else "?"
    redis_version = str(redis.Redis.from_url(redis_url).info("server").get("redis_version", "?"))
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "cpus": str(len(os.sched_getaffinity(0))),
        "cpu_model": cpu_model,
        "memory": f"{mem_kb / 1024 / 1024:.0f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "gunicorn": gunicorn.__version__,
        "psycopg": psycopg.__version__,
        "postgres": pg_version.split()[0],
        "redis": redis_version,
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "code": code_version(),
    }


# --- Reporting --------------------------------------------------------------------------------
@dataclass
class Report:
    info: dict[str, str]
    args: argparse.Namespace
    command: str
    started: dt.datetime
    client_kind: str
    endpoints: list[Endpoint]
    census: Census | None
    closed: dict[str, Tally] = field(default_factory=dict)
    opened: dict[str, Tally] = field(default_factory=dict)
    rounds: list[dict[str, float]] = field(default_factory=list)  # per round: name -> req/s
    foreign_before: float = math.nan

    def ratio(self, name: str) -> float:
        bare = self.closed["bare"].throughput
        return self.closed[name].throughput / bare if bare else math.nan

    def round_ratios(self, name: str) -> list[float]:
        return [r[name] / r["bare"] for r in self.rounds if r.get("bare") and name in r]


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "n/a" if v is None or math.isnan(v) else format(v, spec)


def verdicts(report: Report) -> list[tuple[str, str, bool]]:
    """(goal, measured, passed). The throughput goal is the envelope's (GET /accounts/{id});
    the latency goal is checked for both endpoints of the issue."""
    out = []
    if "account_get" in report.closed:
        ratio = report.ratio("account_get")
        per_round = report.round_ratios("account_get")
        spread = f", rounds {min(per_round):.0%}–{max(per_round):.0%}" if per_round else ""
        out.append(
            (
                f"GET /accounts/{{id}} throughput ≥ {GOAL_RATIO:.0%} of the bare view's",
                f"{ratio:.0%} ({report.closed['account_get'].throughput:.0f} vs "
                f"{report.closed['bare'].throughput:.0f} req/s{spread})",
                ratio >= GOAL_RATIO,
            )
        )
    for name, label in (("account_get", "GET /accounts/{id}"), ("user_new", "POST /users (new)")):
        res = report.opened.get(name)
        if res is None:
            continue
        p99 = res.pct(99)
        out.append(
            (
                f"{label} p99 < {GOAL_P99_MS:.0f} ms at {res.target_rate:g} req/s, no errors",
                f"p99 {_fmt(p99)} ms, {res.errors} errors",
                p99 < GOAL_P99_MS and res.errors == 0,
            )
        )
    return out


def results_table(report: Report) -> str:
    rate = report.args.rate
    lines = [
        f"| endpoint | throughput (req/s) | ratio to bare | p50 @ {rate:g}/s (ms) | p90 | p99 "
        "| max | achieved rate | errors (closed / open) | SQL per request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for ep in report.endpoints:
        closed = report.closed.get(ep.name)
        ol = report.opened.get(ep.name)
        q = report.census.queries.get(ep.name) if report.census else None
        lines.append(
            f"| {ep.label} | {_fmt(closed.throughput if closed else None, '.0f')} "
            f"| {_fmt(report.ratio(ep.name) if closed else None, '.2f')} "
            f"| {_fmt(ol.pct(50) if ol else None)} | {_fmt(ol.pct(90) if ol else None)} "
            f"| {_fmt(ol.pct(99) if ol else None)} | {_fmt(ol.pct(100) if ol else None)} "
            f"| {_fmt(ol.throughput, '.0f') + '/s' if ol else 'n/a'} "
            f"| {closed.errors if closed else 'n/a'} / {ol.errors if ol else 'n/a'} "
            f"| {q if q is not None else 'n/a'} |"
        )
    return "\n".join(lines)


def server_cpu_ms(t: Tally) -> float:
    """gunicorn + PostgreSQL + Redis CPU milliseconds per request: the server-side cost."""
    c = t.cpu
    return c.per_request_ms(c.gunicorn + c.postgres + c.redis)


def cpu_table(report: Report) -> str:
    lines = [
        "| endpoint (closed loop) | gunicorn | postgres | redis | server total "
        "| bare ÷ this (by server CPU) | load generator | not ours "
        "| cores busy (all / not ours) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    bare = report.closed.get("bare")
    for ep in report.endpoints:
        t = report.closed.get(ep.name)
        if t is None:
            continue
        c = t.cpu
        ms = c.per_request_ms
        total = server_cpu_ms(t)
        ratio = server_cpu_ms(bare) / total if bare and total else math.nan
        lines.append(
            f"| {ep.label} | {ms(c.gunicorn):.2f} | {ms(c.postgres):.2f} | {ms(c.redis):.2f} "
            f"| {total:.2f} | {_fmt(ratio, '.2f')} | {ms(c.client):.2f} | {ms(c.other):.2f} "
            f"| {c.cores(c.machine):.2f} / {c.cores(c.other):.2f} |"
        )
    return "\n".join(lines)


class _Tallied(Protocol):
    closed: dict[str, Tally]
    opened: dict[str, Tally]


def error_lines(report: _Tallied) -> list[str]:
    """The error kinds seen per endpoint and loop (any report with closed/opened tallies)."""
    out = []
    for t in [*report.closed.values(), *report.opened.values()]:
        if t.error_kinds:
            kinds = ", ".join(f"{k} ×{v}" for k, v in t.error_kinds.most_common())
            out.append(f"- {t.endpoint} ({t.mode} loop): {kinds}")
    return out


def render_section(report: Report) -> str:
    info, args = report.info, report.args
    verdict_rows = "\n".join(
        f"| {goal} | {measured} | {'PASS' if ok else 'FAIL'} |"
        for goal, measured, ok in verdicts(report)
    )
    errors = error_lines(report)
    census = report.census
    census_line = ""
    if census:
        census_line = (
            "\nSQL statements per request, counted in process with `CaptureQueriesContext`, "
            "BEGIN/SAVEPOINT/COMMIT included (API key cached / key cache cold): "
            + "; ".join(
                f"{ep.label}: {census.queries[ep.name]} / {census.queries_cold_key[ep.name]}"
                for ep in report.endpoints
                if ep.name in census.queries
            )
            + ". Not in those counts: the connection health check before the first query "
            "of every request under gunicorn (`CONN_HEALTH_CHECKS`; core.dbbackends.postgresql "
            "sends its `SELECT 1` only when the connection's socket has something to read), "
            "and, on partner endpoints, the rate limiter's one Redis round trip.\n"
        )
    foreign_open = ", ".join(
        f"{name} {t.cpu.cores(t.cpu.other):.2f}" for name, t in report.opened.items()
    )
    error_block = ("\nErrors by kind:\n\n" + "\n".join(errors) + "\n") if errors else ""
    return f"""{SECTION_TITLE}

Measured {report.started:%Y-%m-%d %H:%M} UTC by `{report.command}`
(`make bench` runs it with the defaults), on {info["code"]}.

**Machine:** {info["cpus"]} CPUs ({info["cpu_model"]}), {info["memory"]} RAM, Linux
{info["kernel"]}; Python {info["python"]}, Django {info["django"]}, gunicorn {info["gunicorn"]},
psycopg {info["psycopg"]}, PostgreSQL {info["postgres"]}, Redis {info["redis"]}. Other
processes were using {report.foreign_before:.2f} cores just before the run (load average
{info["loadavg"]}).

**Setup.** gunicorn `config.wsgi:application`, {args.workers} sync workers, settings
`bench.settings_bench` (production settings, `DEBUG=False`, plus the baseline's URL); database
`{DB_NAME}`, fresh, seeded with {args.accounts} traders with one account each (no positions or
orders; opened the same day, so the envelope's day-start lookup takes its two-query path);
the rate limiter on its real path, Redis DB {REDIS_DB}, with the bench tenant's
limits far above the load so nothing is rejected. **Baseline:** `bench/urls_bench.py`, a plain
Django view, same middleware, no auth, one primary-key read (`values("cash").first()`).
**Load generator:** this script, asyncio with a {report.client_kind} HTTP/1.1 client, in one
process on the same {info["cpus"]} cores as gunicorn, PostgreSQL and Redis; its CPU cost per
request is in the CPU table (`--client httpx` swaps in httpx.AsyncClient, which costs several
times more client CPU per request and so understates the baseline). The sync worker closes the
connection after each response, so every request, the baseline's included, pays a TCP
connect.

**Throughput:** closed loop, {args.concurrency} concurrent connections, {args.rounds} round(s);
each round runs every endpoint for {args.duration / args.rounds:g} s in rotating order, so the
baseline and the endpoints share the same machine conditions; warm-up {args.warmup:g} s per
endpoint first. **Latency:** open loop at {args.rate:g} requests/s for {args.duration:g} s per
endpoint; send times fixed in advance and latency counted from the scheduled send time (no
coordinated omission). **Errors:** non-2xx answers, transport errors and timeouts
({REQUEST_TIMEOUT_S:g} s). POST /users (new) registers a fresh external_id and email per request
(201); (replay) re-sends an already registered external_id and email (200). `whoami` is a
reference row (closed loop only): the partner stack without any SQL (key from the per-process
cache, the Redis limiter, DRF), to separate the stack's fixed cost from the endpoints' own work.

{results_table(report)}
{census_line}
CPU milliseconds per request during the closed-loop phases, from /proc. "postgres" and
"redis" count every such process on the machine; "not ours" is the machine's remaining busy
time (other users' processes, kernel work not charged to a process). "bare ÷ this" compares
server CPU per request, which other load on the machine barely moves: roughly the throughput
ratio the endpoint would reach if the server had the cores to itself.

{cpu_table(report)}

Cores used by other processes during the open-loop phases: {foreign_open}.

| goal | measured | verdict |
|---|---|---|
{verdict_rows}
{error_block}"""


def write_docs(section: str) -> None:
    write_docs_section(SECTION_TITLE, section)


def print_report(report: Report) -> None:
    print()
    print(results_table(report))
    print()
    print(cpu_table(report))
    print()
    for goal, measured, ok in verdicts(report):
        print(f"  [{'PASS' if ok else 'FAIL'}] {goal}: {measured}")
    for line in error_lines(report):
        print("  " + line)
    for i, r in enumerate(report.rounds, 1):
        print(f"  round {i}: " + ", ".join(f"{k} {v:.0f}/s" for k, v in r.items()))
    for name, t in report.closed.items():
        print(f"  closed {name}: statuses {dict(t.statuses)}, cores not ours "
              f"{t.cpu.cores(t.cpu.other):.2f}")  # fmt: skip
    for name, t in report.opened.items():
        print(f"  open {name}: statuses {dict(t.statuses)}, cores not ours "
              f"{t.cpu.cores(t.cpu.other):.2f}")  # fmt: skip


# --- Main -------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Partner API benchmark (issue #2); see the module docstring.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per endpoint and mode")
    p.add_argument("--rounds", type=int, default=5, help="closed-loop rounds (interleaving)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per endpoint")
    p.add_argument("--concurrency", type=int, default=16, help="closed-loop connections")
    p.add_argument("--rate", type=float, default=200.0, help="open-loop requests/s")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    p.add_argument("--accounts", type=int, default=1000, help="seeded traders/accounts")
    p.add_argument("--client", choices=("raw", "httpx"), default="raw", help="HTTP client")
    p.add_argument("--only", default="", help="comma-separated endpoints (bare always runs)")
    p.add_argument("--wait-quiet", type=float, default=20.0, metavar="SECONDS",
                   help="first wait up to this long for other processes to go quiet")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="short smoke run; implies --no-write")
    p.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    p.add_argument("--show-sql", action="store_true", help="print the census SQL")
    p.add_argument("--settings", default="bench.settings_bench", help="Django settings module")
    p.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432", help="server URL")
    p.add_argument("--redis", default=f"redis://127.0.0.1:6379/{REDIS_DB}", help="Redis URL")
    args = p.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 2.0)
        args.rounds = 1
        args.warmup = min(args.warmup, 0.5)
        args.accounts = min(args.accounts, 100)
        args.no_write = True
    if not args.redis.rstrip("/").endswith(f"/{REDIS_DB}"):
        p.error(f"--redis must point at DB {REDIS_DB}")
    if args.rounds < 1 or args.duration <= 0 or args.concurrency < 1 or args.rate <= 0:
        p.error("--rounds, --duration, --concurrency and --rate must be positive")
    return args


async def run_load(report: Report, port: int, raw_key: str, gunicorn_pid: int) -> None:
    args = report.args
    client_cls = RawClient if args.client == "raw" else HttpxClient
    client = client_cls("127.0.0.1", port, raw_key, max(args.concurrency, 64))
    endpoints = report.endpoints
    try:
        await closed_rounds(
            client, endpoints, args=args, gunicorn_pid=gunicorn_pid,
            closed=report.closed, rounds=report.rounds, warmups={},
        )  # fmt: skip
        for ep in (ep for ep in endpoints if not ep.reference):
            print(f"open loop {ep.name} ({args.rate:g}/s, {args.duration:g}s)", flush=True)
            tally = report.opened.setdefault(ep.name, Tally(ep.name, "open", args.rate))
            await open_loop(
                client, ep, rate=args.rate, duration=args.duration,
                gunicorn_pid=gunicorn_pid, tally=tally,
            )  # fmt: skip
            await asyncio.sleep(0.5)
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    command = shlex.join(
        ["python", "bench/partner_api.py", *(sys.argv[1:] if argv is None else argv)]
    )
    db_url = f"{args.pg}/{DB_NAME}"
    os.environ["DATABASE_URL"] = db_url
    os.environ["REDIS_URL"] = args.redis
    # A deployment-shaped run (DATABASE_URL set, DEBUG=0) requires a secret; this one is
    # made up per run and only signs the bench's own cursors and links.
    os.environ.setdefault("SECRET_KEY", "bench-" + secrets.token_urlsafe(32))

    import redis

    info = machine_info(args.pg, args.redis)
    print(f"machine: {info}", flush=True)
    t0 = time.monotonic()
    recreate_database(args.pg)
    redis.Redis.from_url(args.redis).flushdb()
    django_setup(args.settings)
    migrate()
    print(f"database {DB_NAME} migrated in {time.monotonic() - t0:.1f}s", flush=True)
    t0 = time.monotonic()
    seed = seed_data(args.accounts)
    print(f"seeded {args.accounts} traders/accounts in {time.monotonic() - t0:.1f}s", flush=True)

    run_tag = f"{int(time.time())}"
    census = query_census(seed, build_endpoints(seed, f"census{run_tag}"))
    print(f"SQL per request (key cached): {census.queries}", flush=True)
    print(f"SQL per request (key cache cold): {census.queries_cold_key}", flush=True)
    if args.show_sql:
        for name, statements in census.sql.items():
            print(f"-- {name}")
            for statement in statements:
                print(f"   {statement}")

    only = {name.strip() for name in args.only.split(",") if name.strip()}
    endpoints = [
        ep for ep in build_endpoints(seed, run_tag)
        if ep.name == "bare" or not only or ep.name in only
    ]  # fmt: skip
    report = Report(
        info=info,
        args=args,
        command=command,
        started=started,
        client_kind="hand-rolled asyncio-streams" if args.client == "raw" else "httpx.AsyncClient",
        endpoints=endpoints,
        census=census,
    )
    report.foreign_before = wait_quiet(args.wait_quiet)
    print(f"other processes use {report.foreign_before:.2f} cores", flush=True)
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "REDIS_URL": args.redis,
        "DJANGO_SETTINGS_MODULE": args.settings,
    }
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

    print_report(report)
    if not args.no_write:
        write_docs(render_section(report))
        print(f"\nwrote {DOCS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
