"""Time helpers: trading-day boundaries in a tenant's timezone."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def day_boundary(now: dt.datetime, tz_name: str, local_time: dt.time) -> dt.datetime:
    """The most recent instant ≤ now at which the local clock in `tz_name` read `local_time`
    (e.g. 17:00 America/New_York), as an aware UTC datetime. DST gaps resolve forward."""
    tz = zone(tz_name)
    local_now = now.astimezone(tz)
    candidate = dt.datetime.combine(local_now.date(), local_time, tzinfo=tz)
    if candidate > local_now:
        candidate = dt.datetime.combine(
            local_now.date() - dt.timedelta(days=1), local_time, tzinfo=tz
        )
    # Round-trip through UTC normalises a wall time that falls in a DST gap.
    return candidate.astimezone(dt.UTC)


def trading_day(at: dt.datetime, tz_name: str, local_time: dt.time) -> dt.date:
    """The trading day an instant belongs to: days start at the boundary, not at midnight."""
    boundary = day_boundary(at, tz_name, local_time)
    return boundary.astimezone(zone(tz_name)).date()


def from_ms(ms: int | None) -> dt.datetime | None:
    """A Unix time in milliseconds (the exchange's and the bus's stamps) as an aware UTC
    datetime; None for no time (None or 0)."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC) if ms else None
