"""Model field shapes for money, share sizes and prices: one definition each."""

from __future__ import annotations

from typing import Any

from django.db import models

from core.money import MONEY_DIGITS, PRICE_DIGITS, PRICE_PLACES, SIZE_DIGITS


def money_field(**kwargs: Any) -> models.DecimalField:
    """Cash amounts: 6 decimals (collateral precision)."""
    return models.DecimalField(max_digits=MONEY_DIGITS, decimal_places=6, **kwargs)


def size_field(**kwargs: Any) -> models.DecimalField:
    """Share quantities: 6 decimals (fills from a cash amount need more than 2)."""
    return models.DecimalField(max_digits=SIZE_DIGITS, decimal_places=6, **kwargs)


def price_field(**kwargs: Any) -> models.DecimalField:
    """Prices and averages in [0, 1]: 6 decimals."""
    return models.DecimalField(max_digits=PRICE_DIGITS, decimal_places=PRICE_PLACES, **kwargs)
