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


def query_datetime(params: Any, name: str) -> dt.datetime | None:
    """`name` from the query as an ISO-8601 time with a zone, or None when absent. A `+` in
    the offset arrives as a space when the client did not encode it."""
    raw = params.get(name)
    if raw in (None, ""):
        return None
    value = parse_datetime(raw.replace(" ", "+"))
    if value is None or value.tzinfo is None:
        raise errors.ValidationFailed(
            details={name: ["ISO-8601 with a timezone, e.g. 2026-01-31T00:00:00Z."]}
        )
    return value
