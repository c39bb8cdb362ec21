"""Database helpers: race-safe create-or-get and bounded retries on lock conflicts."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, ParamSpec, TypeVar
from urllib.parse import quote

from django.db import IntegrityError, OperationalError, transaction

T = TypeVar("T")
P = ParamSpec("P")

logger = logging.getLogger("polysim.db")

# SQLSTATEs Postgres asks clients to retry (serialization_failure, deadlock_detected).
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})


def create_or_get(create: Callable[[], T], get: Callable[[], T | None]) -> tuple[T, bool]:
    """Insert inside a savepoint; if a unique constraint says someone else won the race,
    return theirs. On Postgres READ COMMITTED the losing INSERT waits for the winner's commit,
    so `get()` then sees the committed row. Re-raises when the conflict was something else."""
    try:
        with transaction.atomic():
            return create(), True
    except IntegrityError:
        existing = get()
        if existing is None:
            raise
        return existing, False


def _is_retryable(exc: BaseException) -> bool:
    cause = exc.__cause__
    sqlstate = getattr(cause, "sqlstate", None) or getattr(
        getattr(cause, "diag", None), "sqlstate", None
    )
    return sqlstate in RETRYABLE_SQLSTATES


def retry_on_conflict(attempts: int = 5) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Re-run a whole transaction on deadlock/serialization failure (docs/engine-rules.md
    C2), with jittered backoff. Must wrap the outermost atomic block: retrying inside one
    is meaningless."""

    def decorator(func: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            for attempt in range(1, attempts + 1):
                try:
                    return func(*args, **kwargs)
                except OperationalError as exc:
                    if attempt == attempts or not _is_retryable(exc):
                        raise
                    logger.warning("retrying %s after %s (attempt %d)", func.__name__, exc, attempt)
                    time.sleep(random.uniform(0, 0.01 * 2**attempt))
            raise AssertionError("unreachable")

        return wrapper

    return decorator


# --- Raw row values → Python -------------------------------------------------------------------
# Hot read paths use fixed SQL instead of the ORM (building a query costs more than running
# it). These turn psycopg's values into what the ORM would have returned.
def db_decimal(value: Any) -> Decimal | None:
    """NUMERIC → Decimal (psycopg hands numeric back as Decimal; an integer expression such
    as a COALESCE(..., 0) comes back as int)."""
    if value is None or isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        raise TypeError(f"money is never a float: {value!r}")
    return Decimal(value)


def db_datetime(value: Any) -> dt.datetime | None:
    """timestamptz → aware datetime (psycopg already returns one; None stays None)."""
    if value is not None and (not isinstance(value, dt.datetime) or value.tzinfo is None):
        raise TypeError(f"not an aware datetime: {value!r}")
    return value


def db_json(value: Any) -> Any:
    """jsonb → Python (Django registers no jsonb loader, so it arrives as text)."""
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def db_uuid(value: Any) -> uuid.UUID | None:
    if value is not None and not isinstance(value, uuid.UUID):
        raise TypeError(f"not a UUID: {value!r}")
    return value


def database_url(settings_dict: dict[str, Any]) -> str:
    """A Django database's settings as a DATABASE_URL (for child processes on the same
    database): TCP host and port, or a Unix socket directory as the embedded server uses."""
    user = quote(str(settings_dict["USER"] or ""), safe="")
    secret = settings_dict.get("PASSWORD") or ""
    password = f":{quote(str(secret), safe='')}" if secret else ""
    host = str(settings_dict.get("HOST") or "")
    port = str(settings_dict.get("PORT") or "")
    name = quote(str(settings_dict["NAME"]), safe="")
    if host.startswith("/"):
        return f"postgres://{user}{password}@/{name}?host={quote(host, safe='/')}"
    return f"postgres://{user}{password}@{host or '127.0.0.1'}:{port or '5432'}/{name}"
