"""DRF building blocks shared by every API: strict input serializers, money fields that
never touch floats, bounded JSON objects."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.money import to_decimal, wire


@extend_schema_field({"type": "string", "format": "decimal", "example": "10000.00"})
class MoneyField(serializers.Field):
    """Decimal on the wire as a string ("10000.00"). Input accepts a decimal string or an
    integer; a JSON number with a fraction is refused, because JSON parsers turn it into a
    binary float before we see it."""

    default_error_messages = {
        "invalid": 'Send a decimal string such as "100.50".',
        "float": 'Send money as a decimal string ("100.50"), not a JSON number with decimals.',
        "max_places": "At most {places} decimal places.",
        "min_value": "Must be greater than {limit}.",
        "max_value": "Must be at most {limit}.",
    }

    def __init__(
        self,
        *,
        max_places: int | None = None,
        gt: Decimal | None = None,
        max_value: Decimal | None = None,
        **kwargs: Any,
    ) -> None:
        self.max_places = max_places
        self.gt = gt
        self.max_value = max_value
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> Decimal:
        if isinstance(data, bool):
            self.fail("invalid")
        if isinstance(data, float):
            self.fail("float")
        if not isinstance(data, (str, int)):
            self.fail("invalid")
        try:
            value = to_decimal(data)
        except (ValueError, TypeError):
            self.fail("invalid")
        exponent = value.as_tuple().exponent
        if (
            self.max_places is not None
            and isinstance(exponent, int)
            and -exponent > self.max_places
        ):
            self.fail("max_places", places=self.max_places)
        if self.gt is not None and value <= self.gt:
            self.fail("min_value", limit=wire(self.gt, min_places=0))
        if self.max_value is not None and value > self.max_value:
            self.fail("max_value", limit=wire(self.max_value, min_places=0))
        return value

    def to_representation(self, value: Decimal) -> str | None:
        return wire(value)


@extend_schema_field({"type": "string", "format": "decimal", "example": "0.52"})
class PriceField(MoneyField):
    """A price or share size: same wire rules, shown with its natural precision."""

    def to_representation(self, value: Decimal) -> str | None:
        return wire(value, min_places=0) if value is not None else None


@extend_schema_field(OpenApiTypes.OBJECT)
class JSONObjectField(serializers.Field):
    """A JSON object (dict) of bounded serialized size, stored as given."""

    default_error_messages = {
        "not_object": "Must be a JSON object.",
        "too_large": "Must be at most {limit} bytes when serialized.",
    }

    def __init__(self, *, max_bytes: int = 16 * 1024, **kwargs: Any) -> None:
        self.max_bytes = max_bytes
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            self.fail("not_object")
        if len(json.dumps(data, separators=(",", ":")).encode()) > self.max_bytes:
            self.fail("too_large", limit=self.max_bytes)
        return data

    def to_representation(self, value: dict[str, Any]) -> dict[str, Any]:
        return value


class StrictInputSerializer(serializers.Serializer):
    """Refuses bodies that are not a JSON object and fields it does not know: a typo such as
    `metdata` is an error, not a silently dropped value."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                {"non_field_errors": ["The body must be a JSON object."]}
            )
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class CleanTextField(serializers.CharField):
    """Text without control characters (ids, emails)."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError("Must be a string.")
        value = super().to_internal_value(data)
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise serializers.ValidationError("Must not contain control characters.")
        return value


def iso_utc(value: dt.datetime | None) -> str | None:
    """A timestamp on the wire: ISO-8601 in UTC with `Z`."""
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


class IsoDateTimeField(serializers.DateTimeField):
    """A timestamp on the wire as iso_utc writes it."""

    def to_representation(self, value: dt.datetime | None) -> str | None:  # type: ignore[override]
        return iso_utc(value)


class UnixSecondsField(serializers.IntegerField):
    """A timestamp on the wire as whole unix seconds (a GTD order's expiration)."""

    def to_representation(self, value: dt.datetime) -> int:  # type: ignore[override]
        return int(value.timestamp())


class DecimalTextField(PriceField):
    """A price or size already in its wire form (the price bus's exact decimal strings, a
    resolution's payouts): documented as PriceField, sent as it is."""

    def to_representation(self, value: str) -> str:  # type: ignore[override]
        return value
