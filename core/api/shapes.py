"""One declaration per wire shape. A DRF serializer declares a request or response body once;
drf-spectacular reads it for the OpenAPI document, and a Shape made from it validates the
request (`validate`) and builds the response (`render`, `render_many`).

Why not `Serializer(obj).data`: constructing a serializer deep-copies its declared fields,
which on the hot paths (the envelope, a page of trades, a placed order) cost several times
what the body itself does (measured: docs/benchmarks.md, "Wire shapes"). A Shape binds one
instance per serializer class, once, and
- renders through a function generated once from that instance's fields: each field's
  `source` path and its own `to_representation` (str/int directly for plain CharField,
  IntegerField, UUIDField and JSONField), with DRF's rule that a None attribute renders as
  null;
- validates through that instance's `run_validation`, which keeps no state on the instance,
  so one Shape serves every thread and raises the same ValidationError as `is_valid`.

Sources are attribute names, mapping keys, properties or dotted paths of those (a None part
of a path renders null); callables are not called, unlike DRF's own rendering.
"""

from __future__ import annotations

import keyword
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django.db.models.manager import BaseManager
from rest_framework import serializers

Render = Callable[[Any], Any]


def _step(value: Any, name: str) -> Any:
    return value[name] if isinstance(value, Mapping) else getattr(value, name)


def _read(path: list[str]) -> Render:
    """Reads a dotted source path from objects or mappings; a None part reads as None."""

    def read(value: Any) -> Any:
        for name in path:
            if value is None:
                return None
            value = _step(value, name)
        return value

    return read


# Fields whose to_representation is a plain conversion: the plan calls it directly (a bound
# method call per field was most of the render's cost over a hand-written dict).
_DIRECT: dict[type, Render] = {
    serializers.CharField: str,
    serializers.IntegerField: int,
}


def _converter(field: Any) -> Render:
    if isinstance(field, serializers.BaseSerializer):
        return _compile(field)
    direct = _DIRECT.get(type(field))
    if direct is not None:
        return direct
    if type(field) is serializers.UUIDField and field.uuid_format == "hex_verbose":
        return str
    if type(field) is serializers.JSONField and not field.binary:
        return _identity
    return field.to_representation  # type: ignore[no-any-return]


def _identity(value: Any) -> Any:
    return value


def _compile(serializer: Any) -> Render:
    """A function rendering `serializer`'s representation of a value, generated once from its
    fields: a line or two per field reading its source (attributes, or keys of a dict; longer
    or unusual paths through `_read`) and converting it unless it is None."""
    if isinstance(serializer, serializers.ListSerializer):
        child = _compile(serializer.child)

        def render_list(values: Any) -> list[Any]:
            if isinstance(values, BaseManager):
                values = values.all()
            return [child(value) for value in values]

        return render_list
    namespace: dict[str, Any] = {}
    lines = ["def render(value):", "    is_dict = type(value) is dict"]
    items = []
    for i, (name, field) in enumerate(serializer.fields.items()):
        if field.write_only:
            continue
        namespace[f"c{i}"] = _converter(field)
        path = list(field.source_attrs)
        plain = all(part.isidentifier() and not keyword.iskeyword(part) for part in path)
        if not path:
            lines.append(f"    v{i} = value")
        elif len(path) == 1 and plain:
            lines.append(f"    v{i} = value[{path[0]!r}] if is_dict else value.{path[0]}")
        elif len(path) == 2 and plain:
            first, second = path
            lines.append(f"    t{i} = value[{first!r}] if is_dict else value.{first}")
            lines.append(
                f"    v{i} = None if t{i} is None else "
                f"(t{i}[{second!r}] if type(t{i}) is dict else t{i}.{second})"
            )
        else:
            namespace[f"r{i}"] = _read(path)
            lines.append(f"    v{i} = r{i}(value)")
        items.append(f"{name!r}: None if v{i} is None else c{i}(v{i})")
    lines.append("    return {" + ", ".join(items) + "}")
    exec("\n".join(lines), namespace)  # noqa: S102 - source built above from field names
    return namespace["render"]  # type: ignore[no-any-return]


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
