"""`manage.py demo`: seed a ready-to-try tenant, print how to use it, then run the whole stack.

On the embedded PostgreSQL and Redis (or the URLs when set), as production runs it: the web
server (gunicorn), the market-data feed, the maker matcher, a Celery worker and Celery beat,
each a child process supervised here (core/supervisor.py) with its output in var/log/<name>.log,
so the banner stays readable. Offline, the feed reads the fake Polymarket (synthetic demo
dataset with a labelled price walk) served from a thread of this process. The seed is
idempotent: run it again and again; only the API key (whose full value is known only at
creation), the operator password and the login link are new each run. The banner's
essentials also go to var/demo.txt. Ctrl-C or SIGTERM stops every child; a child that dies
is restarted, and one that keeps dying stops the demo with its log's last lines
(docs/operations.md, "The demo").
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from core import errors
from core.supervisor import Supervisor, child_env

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


def _reachable(url: str, timeout: float = 2.0) -> bool:
    try:
        httpx.get(url, timeout=timeout)
    except httpx.HTTPError:
        return False
    return True


def port_free(addr: str, port: int) -> bool:
    """Whether `addr:port` can be listened on (as gunicorn will: SO_REUSEADDR set)."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((addr, port))
        except OSError:
            return False
    return True


def demo_children(
    *, addr: str, port: int, feed: bool, var_dir: Path
) -> list[tuple[str, list[str]]]:
    """The demo's processes, in start order (stopped in reverse): the production commands of
    docs/operations.md, sized for a laptop."""
    py, manage = sys.executable, str(Path(settings.BASE_DIR) / "manage.py")
    bind = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
    children = [
        ("worker", [py, "-m", "celery", "-A", "config", "worker", "--loglevel=INFO",
                    "--concurrency=2", "--without-gossip", "--without-mingle",
                    "--hostname=demo-worker@%h"]),
        ("beat", [py, "-m", "celery", "-A", "config", "beat", "--loglevel=INFO",
                  f"--schedule={var_dir / 'celerybeat-schedule'}"]),
        ("matcher", [py, manage, "trading", "match"]),
    ]  # fmt: skip
    if feed:
        children.append(("feed", [py, manage, "marketdata", "stream"]))
    children.append(
        ("web", [py, "-m", "gunicorn", "config.wsgi:application", "--bind", bind,
                 "--workers", "2", "--threads", "4", "--graceful-timeout", "5",
                 # ~/.gunicorn/gunicorn.ctl would be shared by every demo and test run.
                 "--no-control-socket",
                 # No login token or API key in var/log/web.log (core/redact.py).
                 "--logger-class", "core.redact.RedactingGunicornLogger",
                 "--access-logfile", "-", "--error-logfile", "-"])
    )  # fmt: skip
    return children


def _log_to_file(path: Path) -> None:
    """Send this process's log records to `path` instead of the console, which keeps the
    banner and the supervisor's reports."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            root.removeHandler(handler)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)


class MarketSource:
    """Where the demo's prices come from: real Polymarket when it can be reached (or when
    POLYMARKET_* are set explicitly), otherwise the fake Polymarket serving our synthetic demo
    dataset with its labelled price walk, on a thread of this process. `start` runs one
    discovery pass so the feed has markets to stream from its first second."""

    ENV_VARS = ("POLYMARKET_GAMMA_URL", "POLYMARKET_CLOB_URL", "POLYMARKET_WS_URL")

    def __init__(self, *, discover_limit: int = 200) -> None:
        self.discover_limit = discover_limit
        self.fake: Any = None
        self.description = ""
        self.env: dict[str, str] = {}

    def start(self) -> None:
        from devtools.fakepoly import DEMO_DATA_DIR, FakePolymarket
        from marketdata.clients import ClobClient, GammaClient
        from marketdata.services import discover

        explicit = any(os.environ.get(name) for name in self.ENV_VARS)
        if explicit or _reachable(f"{settings.POLYMARKET_CLOB_URL}/time"):
            self.description = f"Polymarket at {settings.POLYMARKET_CLOB_URL} (live)"
        else:
            self.fake = FakePolymarket(DEMO_DATA_DIR, walk=True).start_in_thread()
            self.env = {
                "POLYMARKET_GAMMA_URL": self.fake.gamma_url,
                "POLYMARKET_CLOB_URL": self.fake.clob_url,
                "POLYMARKET_WS_URL": self.fake.ws_url,
            }
            settings.POLYMARKET_GAMMA_URL = self.fake.gamma_url
            settings.POLYMARKET_CLOB_URL = self.fake.clob_url
            settings.POLYMARKET_WS_URL = self.fake.ws_url
            self.description = (
                f"fake Polymarket on {self.fake.base_url}: SYNTHETIC price walk over the "
                "demo dataset (Polymarket itself is not reachable)"
            )
        with GammaClient() as gamma, ClobClient() as clob:
            result = discover(
                gamma=gamma, clob=clob, limit=self.discover_limit, include_closed=False
            )
        self.description += f"; {result.as_dict().get('markets_seen', 0)} markets discovered"

    def stop(self) -> None:
        if self.fake is not None:
            self.fake.stop()


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
    help = (
        "Seed a demo tenant (key, trader, $10,000 challenge account, login link, operator "
        "login), print how to use it, then run web, feed, matcher, Celery worker and beat "
        "until Ctrl-C. Run `manage.py migrate` first."
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
            "--no-feed", action="store_true", help="run without the market-data feed"
        )
        parser.add_argument(
            "--admin-password",
            default=None,
            help="password for admin@demo.polysim.local (default: a new random one each run)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self._require_migrated()
        addr, port = options["addr"], options["port"]
        serve = not options["no_serve"]
        if serve and not port_free(addr, port):
            # Before the banner: its links would point at whatever holds the port.
            raise CommandError(
                f"port {port} on {addr} is in use (another demo?); pick another one: "
                f"make demo PORT={port + 1}  (or manage.py demo --port {port + 1})"
            )
        base_url = base_url_for(addr, port)
        if base_url != settings.PUBLIC_BASE_URL:
            # Login links are built from PUBLIC_BASE_URL: make them point where we serve.
            settings.PUBLIC_BASE_URL = base_url
        try:
            seed = seed_demo(admin_password=options["admin_password"])
        except errors.DomainError as exc:
            raise CommandError(f"demo seed failed: {exc.code}: {exc.message}") from exc
        banner = self._banner(seed, base_url)
        self.stdout.write(banner)
        if serve:
            self._save_banner(banner, Path(settings.VAR_DIR) / "demo.txt")
            self.serve(addr, port, feed=not options["no_feed"])

    def _require_migrated(self) -> None:
        connection = connections[DEFAULT_DB_ALIAS]
        executor = MigrationExecutor(connection)
        if executor.migration_plan(executor.loader.graph.leaf_nodes()):
            raise CommandError("the database has unapplied migrations: run `manage.py migrate`")

    def _banner(self, seed: DemoSeed, base: str) -> str:
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
        lines = [rule, self.style.SUCCESS("polysim demo is ready"), rule]
        lines += [f"  {label:<12} {value}" for label, value in rows]
        lines += ["", "  Try it:", f'curl -s -H "X-API-Key: {seed.raw_key}" {account_url}', rule]
        return "\n".join(lines)

    @staticmethod
    def _save_banner(banner: str, path: Path) -> None:
        """The banner without terminal colours, readable only by this user (it holds a key
        and a password)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        text = re.sub(r"\x1b\[[0-9;]*m", "", banner) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)

    # --- serving
    def supervisor(
        self, addr: str, port: int, *, feed: bool, var_dir: Path, extra_env: dict[str, str]
    ) -> Supervisor:
        return Supervisor(
            demo_children(addr=addr, port=port, feed=feed, var_dir=var_dir),
            log_dir=var_dir / "log",
            env=child_env(PUBLIC_BASE_URL=str(settings.PUBLIC_BASE_URL), **extra_env),
            cwd=Path(settings.BASE_DIR),
            report=lambda message: self.stderr.write(message),
        )

    def serve(self, addr: str, port: int, *, feed: bool = True) -> None:
        """Run the stack until Ctrl-C / SIGTERM, or until a child keeps dying (CommandError)."""
        stop = threading.Event()
        previous = {
            sig: signal.signal(sig, lambda signum, frame: stop.set())
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        source = MarketSource() if feed else None
        supervisor: Supervisor | None = None
        failure: str | None = None
        var_dir = Path(settings.VAR_DIR)
        _log_to_file(var_dir / "log" / "demo.log")  # the fake and discovery: off the console
        try:
            if source is not None:
                source.start()
                self.stdout.write(f"market data: {source.description}")
            supervisor = self.supervisor(
                addr, port, feed=feed, var_dir=var_dir, extra_env=source.env if source else {}
            )
            supervisor.start()
            names = ", ".join(c.name for c in supervisor.children)
            self.stdout.write(f"running {names}; logs in {var_dir / 'log'}/; Ctrl-C stops them")
            while not stop.wait(0.5):
                failure = supervisor.poll()
                if failure is not None:
                    break
        finally:
            if supervisor is not None:
                self.stdout.write("stopping the demo...")
                supervisor.stop()
            if source is not None:
                source.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if failure is not None:
            raise CommandError(f"the demo stopped: {failure}")
        self.stdout.write("demo stopped")
