"""One declaration per wire shape. A DRF serializer declares a request or response body once;
drf-spectacular reads it for the OpenAPI document, and a Shape made from it validates the
request (`validate`) and builds the response (`render`, `render_many`).

Why not `Serializer(obj).data`: constructing a serializer deep-copies its declared fields,
which on the hot paths (the envelope, a page of trades, a placed order) cost several times
what the body itself does (measured: docs/benchmarks.md, "Wire shapes"). A Shape binds one
instance per serializer class, once, and
- renders through a plan compiled from that instance's fields: each field's `source` path
  and its own `to_representation`, with DRF's rule that a None attribute renders as null;
- validates through that instance's `run_validation`, which keeps no state on the instance,
  so one Shape serves every thread and raises the same ValidationError as `is_valid`.

Sources are attribute names, mapping keys, properties or dotted paths of those (a None part
of a path renders null); callables are not called, unlike DRF's own rendering.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django.db.models.manager import BaseManager
from rest_framework import serializers

Render = Callable[[Any], Any]


def _step(value: Any, name: str) -> Any:
    return value[name] if isinstance(value, Mapping) else getattr(value, name)


def _getter(attrs: list[str]) -> Render:
    """Reads a field's `source_attrs` path from an object or a mapping."""
    if not attrs:  # source="*"
        return lambda value: value
    if len(attrs) == 1:
        (a,) = attrs

        def get1(value: Any) -> Any:
            return value[a] if type(value) is dict else getattr(value, a)

        return get1
    if len(attrs) == 2:
        a, b = attrs

        def get2(value: Any) -> Any:
            value = value[a] if type(value) is dict else getattr(value, a)
            if value is None:
                return None
            return value[b] if type(value) is dict else getattr(value, b)

        return get2

    def get_path(value: Any) -> Any:
        for name in attrs:
            if value is None:
                return None
            value = _step(value, name)
        return value

    return get_path


def _compile(serializer: Any) -> Render:
    if isinstance(serializer, serializers.ListSerializer):
        child = _compile(serializer.child)

        def render_list(values: Any) -> list[Any]:
            if isinstance(values, BaseManager):
                values = values.all()
            return [child(value) for value in values]

        return render_list
    plan = tuple(
        (
            name,
            _getter(field.source_attrs),
            _compile(field)
            if isinstance(field, serializers.BaseSerializer)
            else field.to_representation,
        )
        for name, field in serializer.fields.items()
        if not field.write_only
    )

    def render(value: Any) -> dict[str, Any]:
        return {
            name: None if (attribute := get(value)) is None else convert(attribute)
            for name, get, convert in plan
        }

    return render


class With:
    """`obj` plus values it does not hold itself, for a shape that declares them (a
    registration's `created`, a user's accounts): `With(mapping, created=True)`."""

    def __init__(self, obj: Any, **extra: Any) -> None:
        self.__dict__.update(extra)
        self._obj = obj

    def __getattr__(self, name: str) -> Any:  # only called for names not set above
        return getattr(self._obj, name)


class Shape:
    """The one declaration `serializer_class`, bound once: `validate(data)` for a request,
    `render(obj)` / `render_many(objs)` for a response."""

    def __init__(self, serializer_class: type[serializers.Serializer]) -> None:
        self.serializer_class = serializer_class
        self._bound = serializer_class()
        self._render = _compile(self._bound)

    def validate(self, data: Any) -> dict[str, Any]:
        """The validated data, or DRF's ValidationError (rendered as VALIDATION_FAILED)."""
        return dict(self._bound.run_validation(data))

    def render(self, instance: Any) -> dict[str, Any]:
        return self._render(instance)  # type: ignore[no-any-return]

    def render_many(self, instances: Iterable[Any]) -> list[dict[str, Any]]:
        return [self._render(instance) for instance in instances]
