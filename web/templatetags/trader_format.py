"""Display formats for money, prices and sizes on the trader pages. Decimal in, text out;
never float. Rounding is banker's (ROUND_HALF_EVEN), as everywhere money is shown.

    {{ value|usd }}        $1,234.56 / −$12.30
    {{ value|usd_signed }} +$12.30 / −$12.30 / $0.00
    {{ value|cents }}      62.5¢ (a 0–1 price as Polymarket shows it)
    {{ value|shares }}     1,234.5
    {{ value|percent }}    +3.25% (signed) — percent_plain: 3.25%
    {{ value|updown }}     up / down / flat (a CSS class)
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from django import template

register = template.Library()

_CENT = Decimal("0.01")
_TENTH = Decimal("0.1")
MINUS = "\u2212"  # a real minus sign: same width as "+" in tabular figures


def _dec(value: object) -> Decimal | None:
    if value is None or value == "":
        return None
    if isinstance(value, float):
        raise TypeError("money must never be a float")
    try:
        return value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        return None


def _grouped(value: Decimal, quantum: Decimal) -> str:
    return f"{abs(value.quantize(quantum, rounding=ROUND_HALF_EVEN)):,}"


def _is_zero(value: Decimal, quantum: Decimal) -> bool:
    return value.quantize(quantum, rounding=ROUND_HALF_EVEN) == 0


@register.filter
def usd(value: object) -> str:
    d = _dec(value)
    if d is None:
        return "—"
    sign = MINUS if d < 0 and not _is_zero(d, _CENT) else ""
    return f"{sign}${_grouped(d, _CENT)}"


@register.filter
def usd_signed(value: object) -> str:
    d = _dec(value)
    if d is None:
        return "—"
    if _is_zero(d, _CENT):
        return "$0.00"
    return f"{'+' if d > 0 else MINUS}${_grouped(d, _CENT)}"


@register.filter
def cents(value: object) -> str:
    d = _dec(value)
    if d is None:
        return "—"
    c = (d * 100).quantize(_TENTH, rounding=ROUND_HALF_EVEN).normalize()
    text = format(c, "f")
    return f"{text}¢"


@register.filter
def shares(value: object) -> str:
    d = _dec(value)
    if d is None:
        return "—"
    text = _grouped(d, _CENT)
    if text.endswith(".00"):
        text = text[:-3]
    elif text.endswith("0") and "." in text:
        text = text[:-1]
    return f"{MINUS if d < 0 and not _is_zero(d, _CENT) else ''}{text}"


@register.filter
def percent(value: object) -> str:
    d = _dec(value)
    if d is None:
        return "—"
    if _is_zero(d, _CENT):
        return "0.00%"
    return f"{'+' if d > 0 else MINUS}{_grouped(d, _CENT)}%"


@register.filter
def percent_plain(value: object) -> str:
    d = _dec(value)
    if d is None:
        return "—"
    return f"{MINUS if d < 0 and not _is_zero(d, _CENT) else ''}{_grouped(d, _CENT)}%"


@register.filter
def updown(value: object) -> str:
    d = _dec(value)
    if d is None or _is_zero(d, _CENT):
        return "flat"
    return "up" if d > 0 else "down"
