"""Query-string parameters of both APIs: one rule each, one VALIDATION_FAILED shape."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from django.utils.dateparse import parse_datetime

from core import errors


def query_choice(params: Any, name: str, allowed: Iterable[str], default: str) -> str:
    """`name` from the query, one of `allowed` (`default` when absent)."""
    value = params.get(name) or default
    allowed = tuple(allowed)
    if value not in allowed:
        raise errors.ValidationFailed(details={name: [f"One of: {', '.join(allowed)}."]})
    return str(value)


def query_int(params: Any, name: str, *, low: int, high: int) -> int | None:
    """`name` from the query as an integer from `low` to `high`, or None when absent."""
    raw = params.get(name)
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise errors.ValidationFailed(details={name: [f"An integer from {low} to {high}."]})
    return value


def query_required(params: Any, name: str) -> str:
    """`name` from the query, stripped; ValidationFailed when absent or blank."""
    value = (params.get(name) or "").strip()
    if not value:
        raise errors.ValidationFailed(details={name: ["This parameter is required."]})
    return str(value)


# Times a query may name: nothing we store is older than the Unix epoch, and a bound far in
# the future must still leave room for the arithmetic of a range (no datetime overflow).
EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)


def query_datetime(params: Any, name: str) -> dt.datetime | None:
    """`name` from the query as an ISO-8601 time with a zone, in UTC, or None when absent;
    422 VALIDATION_FAILED when it is not one or lies outside [EARLIEST, LATEST]. A `+` in
    the offset arrives as a space when the client did not encode it."""
    raw = params.get(name)
    if raw in (None, ""):
        return None
    try:
        value = parse_datetime(raw.replace(" ", "+"))
    except ValueError:  # well-formed but impossible: year 0, month 13...
        value = None
    if value is None or value.tzinfo is None:
        raise errors.ValidationFailed(
            details={name: ["ISO-8601 with a timezone, e.g. 2026-01-31T00:00:00Z."]}
        )
    try:
        value = value.astimezone(dt.UTC)
    except OverflowError:  # 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        value = EARLIEST - dt.timedelta(days=1)
    if not EARLIEST <= value <= LATEST:
        raise errors.ValidationFailed(
            details={name: [f"between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} (UTC)."]}
        )
    return value
