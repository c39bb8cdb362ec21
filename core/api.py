"""DRF building blocks shared by every API: strict input serializers, money fields that
never touch floats, bounded JSON objects."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import orjson
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from core.errors import DomainError
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


class RateLimitHeadersMixin:
    """Stamps the X-RateLimit-* headers computed during `initial()` (self._rate_headers) on
    every response of the view, errors included."""

    _rate_headers: dict[str, str]

    def finalize_response(self, request: Any, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        for name, value in getattr(self, "_rate_headers", {}).items():
            response[name] = value
        return response


SERVICE_UNAVAILABLE_DOC = (
    "SERVICE_UNAVAILABLE: PostgreSQL or Redis cannot be reached right now (`details.service` "
    "says which); nothing was changed unless the operation's description says otherwise. "
    "Retry after `Retry-After` seconds, with the same client_order_id or Idempotency-Key "
    "for writes."
)
_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options", "trace"})


def _document_service_unavailable(paths: dict[str, Any]) -> None:
    """Every operation needs PostgreSQL (authentication reads it) and most need Redis, so
    every one can answer 503 SERVICE_UNAVAILABLE (core.exceptions.service_unavailable): added
    here once, or appended to an operation's own 503 (MARKET_NOT_READY, STALE_BOOK...)."""
    retry_after = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait"}}
    for item in paths.values():
        for method, operation in item.items():
            if method not in _HTTP_METHODS:
                continue
            responses = operation.setdefault("responses", {})
            existing = responses.get("503")
            if existing is None:
                responses["503"] = {
                    "description": SERVICE_UNAVAILABLE_DOC,
                    "headers": retry_after,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
            elif SERVICE_UNAVAILABLE_DOC not in existing.get("description", ""):
                existing["description"] = f"{existing.get('description', '')}; or " + (
                    SERVICE_UNAVAILABLE_DOC
                )
                existing.setdefault("headers", retry_after)


def schema_postprocess_for(codes: tuple[type[DomainError], ...]) -> Any:
    """A drf-spectacular postprocessing hook: canonical paths (routes accept an optional
    trailing slash; the documented form has none), the 503 every operation can answer, and
    the API's error-code catalogue, generated from core.errors so the two can never drift."""

    def postprocess(result: dict[str, Any], generator: Any, request: Any, public: bool) -> Any:
        result["paths"] = {
            (path.rstrip("/") if path != "/" else path): item
            for path, item in result["paths"].items()
        }
        _document_service_unavailable(result["paths"])
        rows = "\n".join(f"| `{e.code}` | {e.status} | {e.default_message} |" for e in codes)
        result["info"]["description"] += (
            "\n\n## Error codes\n\n| code | HTTP | meaning |\n|---|---|---|\n" + rows
        )
        result["info"]["x-error-codes"] = [{"code": e.code, "status": e.status} for e in codes]
        return result

    return postprocess


def _not_plain(value: Any) -> Any:
    raise TypeError  # orjson then raises JSONEncodeError: the renderer decides


class PlainJSONResponse(Response):
    """A DRF Response whose body orjson writes, byte for byte as DRF's JSONRenderer writes it
    (compact, UTF-8, U+2028/U+2029 escaped), when that renderer was negotiated without
    parameters (no `indent`) and `data` holds only dicts, lists, str, int, bool and None.
    It must hold no floats (orjson writes exponents differently); anything else orjson
    cannot write (Decimals, datetimes...) goes to the renderer, as in any Response."""

    @property
    def rendered_content(self) -> Any:
        renderer = getattr(self, "accepted_renderer", None)
        if (
            type(renderer) is JSONRenderer
            and getattr(self, "accepted_media_type", None) == renderer.media_type
            and not renderer.ensure_ascii
            and renderer.compact
            and renderer.charset is None
            and self.content_type is None
            and self.data is not None
        ):
            try:
                content = orjson.dumps(
                    self.data,
                    option=orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS,
                    default=_not_plain,
                )
            except orjson.JSONEncodeError:
                pass
            else:
                self["Content-Type"] = renderer.media_type
                return content.replace(b"\xe2\x80\xa8", b"\\u2028").replace(
                    b"\xe2\x80\xa9", b"\\u2029"
                )
        return super().rendered_content
