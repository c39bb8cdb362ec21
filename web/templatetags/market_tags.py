"""Number formats of the trader UI: prices in cents, cash in dollars, shares in hundredths."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django import template
from django.utils import timezone

from web.templatetags.trader_format import _dec, shares, usd

register = template.Library()
# Cash and share sizes look the same on every page: one implementation (trader_format).
register.filter("usd", usd)
register.filter("shares", shares)


@register.filter
def cents(value: Any) -> str:
    """0.455 → '45.5¢' (the way Polymarket shows prices); '–' for nothing."""
    d = _dec(value)
    if d is None:
        return "–"
    text = format((d * 100).normalize(), "f")
    return f"{text}¢"


@register.filter
def usd_compact(value: Any) -> str:
    """Volumes: $950, $12.3K, $4.5M."""
    d = _dec(value)
    if d is None:
        return "–"
    for size, suffix in ((Decimal("1e9"), "B"), (Decimal("1e6"), "M"), (Decimal("1e3"), "K")):
        if abs(d) >= size:
            return f"${(d / size).quantize(Decimal('0.1'))}{suffix}"
    return f"${d.quantize(Decimal('1'))}"


@register.filter
def ends_in(value: dt.datetime | None) -> str:
    """'in 3 days', 'in 5 h', 'ended 2 days ago'."""
    if value is None:
        return ""
    delta = value - timezone.now()
    seconds = int(delta.total_seconds())
    past = seconds < 0
    seconds = abs(seconds)
    if seconds >= 86400:
        text = f"{seconds // 86400} d"
    elif seconds >= 3600:
        text = f"{seconds // 3600} h"
    else:
        text = f"{max(seconds // 60, 1)} min"
    return f"ended {text} ago" if past else f"in {text}"


@register.filter
def plain(value: Any) -> str:
    """A decimal without trailing zeros: 0.0700 → '0.07'."""
    d = _dec(value)
    if d is None:
        return "–"
    text = format(d.normalize(), "f")
    return text
