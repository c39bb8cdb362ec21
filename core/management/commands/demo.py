"""`manage.py demo`: seed a ready-to-try tenant, print how to use it, then serve the site.

Everything runs in this one process on the embedded stack (SQLite, in-process bus, eager
tasks, emails written under var/mail), so `make demo` (= `migrate` + this) needs nothing but
Python. The seed is idempotent: run it again and again; only the API key (whose full value is
known only at creation), the operator password and the login link are new each run.

Background components (the market-data feed, the matcher) are started before the web server
and stopped after it: add them to `Command.background_components`.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from core import errors

if TYPE_CHECKING:
    from accounts.models import Account, User
    from partners.models import Tenant, TenantUser

TENANT_SLUG = "demo"
TENANT_NAME = "Demo Prop Firm"
REDIRECT_ORIGINS = ("http://localhost:8000", "http://127.0.0.1:8000")
TRADER_EXTERNAL_ID = "demo-trader-1"
TRADER_EMAIL = "trader@demo.polysim.local"
ACCOUNT_EXTERNAL_ID = "demo-challenge-1"
ACCOUNT_STAGE = "challenge"
STARTING_BALANCE = Decimal("10000")
# Example prop-firm rules. polysim stores them for the partner's rule engine; it enforces none.
ACCOUNT_RULES: dict[str, Any] = {
    "max_drawdown_pct": "10.00",
    "daily_loss_limit": "500.00",
    "profit_target_pct": "8.00",
    "min_trading_days": 3,
}
ADMIN_EMAIL = "admin@demo.polysim.local"
DEFAULT_ADDR = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_BASE_URL = "http://127.0.0.1:8000"


# --- Background components -------------------------------------------------------------------
class BackgroundComponent(Protocol):
    """Something that runs beside the web server for the life of the demo."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class ThreadComponent:
    """Runs `target(stop_event)` in a daemon thread; `target` returns once the event is set."""

    name: str
    target: Callable[[threading.Event], None]
    join_timeout: float = 5.0
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.target, args=(self._stop,), name=f"demo-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.join_timeout)


class MarketDataComponent:
    """The price feed of the demo: real Polymarket when it can be reached (or when
    POLYMARKET_* are set explicitly), otherwise the fake Polymarket serving our synthetic demo
    dataset with its labelled price walk; then one discovery pass and a websocket ingester
    publishing to the in-process price bus the web process reads."""

    name = "market data"
    ENV_VARS = ("POLYMARKET_GAMMA_URL", "POLYMARKET_CLOB_URL", "POLYMARKET_WS_URL")

    def __init__(self, *, discover_limit: int = 200) -> None:
        self.discover_limit = discover_limit
        self.fake: Any = None
        self.source = ""
        self._ingester: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from marketdata.clients import ClobClient, GammaClient
        from marketdata.fakepoly import DEMO_DATA_DIR, FakePolymarket
        from marketdata.services import discover

        explicit = any(os.environ.get(name) for name in self.ENV_VARS)
        if explicit or _reachable(f"{settings.POLYMARKET_CLOB_URL}/time"):
            self.source = f"Polymarket at {settings.POLYMARKET_CLOB_URL} (live)"
        else:
            self.fake = FakePolymarket(DEMO_DATA_DIR, walk=True).start_in_thread()
            settings.POLYMARKET_GAMMA_URL = self.fake.gamma_url
            settings.POLYMARKET_CLOB_URL = self.fake.clob_url
            settings.POLYMARKET_WS_URL = self.fake.ws_url
            self.source = (
                f"fake Polymarket on {self.fake.base_url}: SYNTHETIC price walk over the "
                "demo dataset (Polymarket itself is not reachable)"
            )
        with GammaClient() as gamma, ClobClient() as clob:
            result = discover(
                gamma=gamma, clob=clob, limit=self.discover_limit, include_closed=False
            )
        self.source += f"; {result.as_dict().get('markets_seen', 0)} markets discovered"
        self._thread = threading.Thread(target=self._run, name="demo-feed", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from marketdata.bus import get_bus
        from marketdata.clients import ClobClient
        from marketdata.ingest import Ingester, config_from_settings

        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._ingester = Ingester(config=config_from_settings(), clob=ClobClient(), bus=get_bus())
        self._loop.run_until_complete(self._ingester.run())

    def stop(self) -> None:
        if self._loop is not None and self._ingester is not None:
            self._loop.call_soon_threadsafe(self._ingester.stop)
        if self._thread is not None:
            self._thread.join(10)
        if self.fake is not None:
            self.fake.stop()


def matcher_component() -> ThreadComponent:
    """The maker matcher (`manage.py trading match` in production) on a thread: every shard
    of the process's price bus, with the order events of this process."""
    from trading.matcher import run_in_thread

    return ThreadComponent(name="matcher", target=run_in_thread, join_timeout=10.0)


def _reachable(url: str, timeout: float = 2.0) -> bool:
    try:
        httpx.get(url, timeout=timeout)
    except httpx.HTTPError:
        return False
    return True


# --- Seed ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoSeed:
    tenant: Tenant
    raw_key: str
    mapping: TenantUser
    account: Account
    login_link: str | None
    login_note: str
    admin_email: str
    admin_password: str


def seed_tenant() -> Tenant:
    from partners.models import Tenant
    from partners.services import tenant_allow_redirect, tenant_create, tenant_set_enabled

    tenant = Tenant.objects.filter(slug=TENANT_SLUG).first()
    if tenant is None:
        tenant = tenant_create(slug=TENANT_SLUG, name=TENANT_NAME)
    elif not tenant.enabled:
        tenant = tenant_set_enabled(tenant=tenant, enabled=True)
    for origin in REDIRECT_ORIGINS:
        tenant = tenant_allow_redirect(tenant=tenant, origin=origin)
    return tenant


def seed_login_link(*, user: User, tenant: Tenant) -> tuple[str | None, str]:
    """A fresh link; when the hourly throttle is hit (demo restarted often), the newest
    still-valid one instead. Returns (url or None, note)."""
    from accounts.models import LoginToken
    from accounts.services import login_link_request, login_link_url

    try:
        token = login_link_request(user=user, tenant=tenant, redirect_url=None)
    except errors.LoginLinkThrottled as exc:
        pending = (
            LoginToken.objects.filter(
                user=user, tenant=tenant, used_at__isnull=True, expires_at__gt=timezone.now()
            )
            .order_by("-created_at")
            .first()
        )
        if pending is None:
            retry = exc.headers.get("Retry-After", "?")
            return None, f"throttled (too many links this hour); run again in {retry} s"
        return login_link_url(token=pending), "single use; reused an unexpired link (hourly limit)"
    minutes = int(settings.LOGIN_LINK_TTL_SECONDS) // 60
    where = (
        f" (see {settings.EMAIL_FILE_PATH})"
        if settings.EMAIL_BACKEND.endswith("filebased.EmailBackend")
        else ""
    )
    return login_link_url(token=token), f"single use, valid {minutes} min; also emailed{where}"


def seed_admin(*, password: str) -> User:
    """The operator superuser, with `password` (set again on every run, so the printed one
    always works)."""
    from accounts.models import User

    user = User.objects.filter(email=ADMIN_EMAIL).first()
    if user is None:
        return User.objects.create_superuser(ADMIN_EMAIL, password)
    user.is_active = user.is_staff = user.is_superuser = True
    user.set_password(password)
    user.save(update_fields=["is_active", "is_staff", "is_superuser", "password"])
    return user


def seed_demo(*, admin_password: str | None = None) -> DemoSeed:
    """Idempotent except for what must be new: one more full-scope key, a login link and the
    operator password."""
    from partners.services import apikey_create, partner_account_open, trader_register

    tenant = seed_tenant()
    issued = apikey_create(tenant=tenant, name="demo")
    mapping, _ = trader_register(
        tenant=tenant, external_id=TRADER_EXTERNAL_ID, email=TRADER_EMAIL, metadata={}
    )
    account, _ = partner_account_open(
        tenant=tenant,
        user_id=mapping.user_id,
        external_id=ACCOUNT_EXTERNAL_ID,
        stage=ACCOUNT_STAGE,
        starting_balance=STARTING_BALANCE,
        rules=ACCOUNT_RULES,
        metadata={},
    )
    login_link, login_note = seed_login_link(user=mapping.user, tenant=tenant)
    password = admin_password or secrets.token_urlsafe(12)
    seed_admin(password=password)
    return DemoSeed(
        tenant=tenant,
        raw_key=issued.raw_key,
        mapping=mapping,
        account=account,
        login_link=login_link,
        login_note=login_note,
        admin_email=ADMIN_EMAIL,
        admin_password=password,
    )


def base_url_for(addr: str, port: int) -> str:
    """Where the demo can be reached: PUBLIC_BASE_URL when it was configured, otherwise the
    address being served (so links and curl lines work with --addr/--port)."""
    configured = str(settings.PUBLIC_BASE_URL).rstrip("/")
    if configured != DEFAULT_BASE_URL or (addr, port) == (DEFAULT_ADDR, DEFAULT_PORT):
        return configured
    host = "127.0.0.1" if addr in ("0.0.0.0", "") else ("::1" if addr == "::" else addr)  # noqa: S104
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class Command(BaseCommand):
    no_feed = False
    help = (
        "Seed a demo tenant (key, trader, $10,000 challenge account, login link, operator "
        "login), print how to use it, then serve the site with its static files. "
        "Run `manage.py migrate` first."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--addr", default=DEFAULT_ADDR, help=f"default {DEFAULT_ADDR}")
        parser.add_argument(
            "--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}"
        )
        parser.add_argument(
            "--no-serve", action="store_true", help="seed and print only (tests, scripting)"
        )
        parser.add_argument(
            "--no-feed", action="store_true", help="serve without the market-data feed"
        )
        parser.add_argument(
            "--admin-password",
            default=None,
            help="password for admin@demo.polysim.local (default: a new random one each run)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self._require_migrated()
        self.no_feed = bool(options["no_feed"])
        addr, port = options["addr"], options["port"]
        base_url = base_url_for(addr, port)
        if base_url != settings.PUBLIC_BASE_URL:
            # Login links are built from PUBLIC_BASE_URL: make them point where we serve.
            settings.PUBLIC_BASE_URL = base_url
        try:
            seed = seed_demo(admin_password=options["admin_password"])
        except errors.DomainError as exc:
            raise CommandError(f"demo seed failed: {exc.code}: {exc.message}") from exc
        self._print_banner(seed, base_url)
        if not options["no_serve"]:
            self.serve(addr, port)

    def _require_migrated(self) -> None:
        connection = connections[DEFAULT_DB_ALIAS]
        executor = MigrationExecutor(connection)
        if executor.migration_plan(executor.loader.graph.leaf_nodes()):
            raise CommandError("the database has unapplied migrations: run `manage.py migrate`")

    def _print_banner(self, seed: DemoSeed, base: str) -> None:
        rule = "=" * 78
        account_url = f"{base}/v1/partner/accounts/{seed.account.pk}"
        rows = [
            ("Site", f"{base}/"),
            ("Admin", f"{base}/admin/"),
            ("  login", f"{seed.admin_email}  password: {seed.admin_password}  (new each run)"),
            ("Partner API", f"{base}/v1/partner/"),
            ("OpenAPI", f"{base}/v1/partner/openapi.json"),
            ("API docs", f"{base}/v1/partner/docs"),
            ("Tenant", f"{seed.tenant.slug}  ({seed.tenant.name})"),
            ("API key", seed.raw_key),
            ("", "full scope; a new key each run, older demo keys stay valid"),
            (
                "Trader",
                f"{seed.mapping.user.email}  user_id {seed.mapping.user_id}, "
                f"external_id {seed.mapping.external_id}",
            ),
            (
                "Account",
                f"{seed.account.pk}  {seed.account.stage}, starting balance "
                f"{seed.account.starting_balance:,.2f}",
            ),
            ("Login link", seed.login_link or "(none)"),
            ("", seed.login_note),
        ]
        self.stdout.write(rule)
        self.stdout.write(self.style.SUCCESS("polysim demo is ready"))
        self.stdout.write(rule)
        for label, value in rows:
            self.stdout.write(f"  {label:<12} {value}")
        self.stdout.write("")
        self.stdout.write("  Try it:")
        self.stdout.write(f'curl -s -H "X-API-Key: {seed.raw_key}" {account_url}')
        self.stdout.write(rule)

    # --- serving
    def background_components(self) -> list[BackgroundComponent]:
        """Started before the web server, stopped after it (reverse order): the feed, then
        the maker matcher filling resting orders from the same in-process price bus."""
        if self.no_feed:
            return []
        return [MarketDataComponent(), matcher_component()]

    def serve(self, addr: str, port: int) -> None:
        previous_sigterm = None
        if threading.current_thread() is threading.main_thread():
            # SIGTERM (docker stop, CI) unwinds like Ctrl-C, so components are stopped too.
            previous_sigterm = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        started: list[BackgroundComponent] = []
        try:
            for component in self.background_components():
                component.start()
                started.append(component)
                detail = getattr(component, "source", "")
                self.stdout.write(f"started {component.name}" + (f": {detail}" if detail else ""))
            ipv6 = ":" in addr
            # staticfiles' runserver with insecure_serving: the admin's CSS/JS are served
            # straight from the apps even with DEBUG=0 (no collectstatic needed for the demo).
            call_command(
                "runserver",
                f"[{addr}]:{port}" if ipv6 else f"{addr}:{port}",
                use_reloader=False,
                use_ipv6=ipv6,
                insecure_serving=True,
            )
        finally:
            for component in reversed(started):
                component.stop()
            if previous_sigterm is not None:
                signal.signal(signal.SIGTERM, previous_sigterm)
