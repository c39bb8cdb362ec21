"""Keyset pagination: opaque, signed, scope-bound cursors; never offsets.

A cursor encodes the sort key of the last item returned plus a scope string (the list it
belongs to, e.g. "trades:<account_id>"). It is HMAC-signed, so a garbled cursor or one taken
from another list (or another tenant) is rejected with INVALID_CURSOR instead of silently
returning the wrong page.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet

from core import errors

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
_SIG_BYTES = 12


def _sign(payload: bytes) -> bytes:
    key = hashlib.sha256(b"polysim-cursor:" + settings.SECRET_KEY.encode()).digest()
    return hmac.new(key, payload, hashlib.sha256).digest()[:_SIG_BYTES]


def encode_cursor(scope: str, values: Sequence[Any]) -> str:
    payload = json.dumps([scope, list(values)], separators=(",", ":"), default=str).encode()
    raw = payload + _sign(payload)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(scope: str, cursor: str) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload, sig = raw[:-_SIG_BYTES], raw[-_SIG_BYTES:]
        if len(raw) <= _SIG_BYTES or not hmac.compare_digest(sig, _sign(payload)):
            raise ValueError("bad signature")
        cursor_scope, values = json.loads(payload)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise errors.InvalidCursor() from exc
    if cursor_scope != scope or not isinstance(values, list):
        raise errors.InvalidCursor()
    return values


def parse_limit(raw: str | None) -> int:
    if not raw:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise errors.ValidationFailed(
            details={"limit": [f"Must be an integer from 1 to {MAX_LIMIT}."]}
        )
    return limit


@dataclass(frozen=True)
class Page:
    items: list[Any]
    next_cursor: str | None
    has_more: bool


def keyset_page(
    queryset: QuerySet[Any],
    *,
    scope: str,
    fields: Sequence[str],
    cursor: str | None,
    limit: int,
    always_cursor: bool = False,
) -> Page:
    """Ascending keyset page over `fields` (the last one must be unique).

    `always_cursor`: for append-only feeds, return a cursor even on the last page (pointing
    just after the last item, or echoing the caller's cursor when the page is empty) so a
    poller can store it and resume without missing or repeating items.
    """
    qs = queryset.order_by(*fields)
    if cursor:
        values = decode_cursor(scope, cursor)
        if len(values) != len(fields):
            raise errors.InvalidCursor()
        qs = qs.filter(_after(fields, values))
    rows = list(qs[: limit + 1])
    has_more = len(rows) > limit
    rows = rows[:limit]
    next_cursor: str | None = None
    if rows and (has_more or always_cursor):
        last = rows[-1]
        next_cursor = encode_cursor(scope, [_key_value(last, f) for f in fields])
    elif not rows and always_cursor:
        next_cursor = cursor or None
    return Page(items=rows, next_cursor=next_cursor, has_more=has_more)


def _key_value(obj: Any, field: str) -> Any:
    value = getattr(obj, field)
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _after(fields: Sequence[str], values: Sequence[Any]) -> Q:
    """(f1, f2, ...) > (v1, v2, ...) in lexicographic order."""
    condition = Q()
    for i, field in enumerate(fields):
        term = Q(**{f"{field}__gt": values[i]})
        for prev_field, prev_value in zip(fields[:i], values[:i], strict=True):
            term &= Q(**{prev_field: prev_value})
        condition |= term
    return condition
