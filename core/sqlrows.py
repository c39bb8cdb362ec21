"""Model instances from rows read with fixed SQL, exactly as the ORM would load them.

The few hot reads that are fixed SQL (registration's insert-or-read of a user, a tenant's
user mapping, a trader's account with its tenant) hand their rows to `model_from_row`: the
listed columns converted as the ORM converts them (core.db's converters), every other field
deferred. The engine's own reads and writes are trading.store's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from functools import cache
from typing import Any, TypeVar

from django.db import connection, models

from core.db import db_datetime, db_json, db_uuid

M = TypeVar("M", bound=models.Model)


# --- reading ----------------------------------------------------------------------------------
def _decimal_converter(places: int | None) -> Callable[[Any], Any]:
    quantum = Decimal(1).scaleb(-places) if places is not None else None

    def convert(value: Any) -> Any:
        if value is None or isinstance(value, Decimal):
            return value  # numeric already, at the column's scale
        if isinstance(value, float):
            raise TypeError(f"money is never a float: {value!r}")
        # An integer expression (a COALESCE(..., 0)): at the field's places, as the column.
        d = Decimal(value)
        return d.quantize(quantum) if quantum is not None else d

    return convert


def _identity(value: Any) -> Any:
    return value


def field_converter(field: models.Field[Any, Any]) -> Callable[[Any], Any]:
    """A raw driver value of `field`'s column → what the ORM would put on the instance."""
    if isinstance(field, models.ForeignKey):
        return field_converter(field.target_field)
    if isinstance(field, models.DecimalField):
        return _decimal_converter(field.decimal_places)
    if isinstance(field, models.UUIDField):
        return db_uuid
    if isinstance(field, models.DateTimeField):
        return db_datetime
    if isinstance(field, models.JSONField):
        return db_json
    return _identity  # psycopg's date, time, bool, int and text are what the ORM holds


def _field(model: type[models.Model], name: str) -> models.Field[Any, Any]:
    field = model._meta.get_field(name)
    if not isinstance(field, models.Field):
        raise ValueError(f"{model.__name__}.{name} is not a concrete field")
    return field


@cache
def _read_shape(
    model: type[models.Model], names: tuple[str, ...]
) -> tuple[list[str], list[tuple[int, Callable[[Any], Any]]]]:
    """The attnames of `names` in the model's field order (what `from_db` expects), and
    for each of them its position in the row and its converter."""
    opts = model._meta
    wanted = {_field(model, n).attname: i for i, n in enumerate(names)}
    if len(wanted) != len(names):
        raise ValueError(f"duplicate fields in {names!r}")
    attnames, plan = [], []
    for f in opts.concrete_fields:
        if f.attname in wanted:
            attnames.append(f.attname)
            plan.append((wanted.pop(f.attname), field_converter(f)))
    if wanted:
        raise ValueError(f"not concrete fields of {model.__name__}: {sorted(wanted)}")
    return attnames, plan


@cache
def _converters(model: type[models.Model], names: tuple[str, ...]) -> list[Callable[[Any], Any]]:
    return [field_converter(_field(model, n)) for n in names]


def convert_row(
    model: type[models.Model], names: tuple[str, ...], values: Sequence[Any]
) -> list[Any]:
    """The raw values of the columns of `names` (field names of `model`), converted as
    `model_from_row` converts them, in the same order — for rows no instance is needed for."""
    return [c(v) for c, v in zip(_converters(model, names), values, strict=True)]


def model_from_row(model: type[M], names: tuple[str, ...], values: Sequence[Any]) -> M:
    """An instance of `model` as the ORM would load it with `.only(*names)`: the listed
    columns (`values`, in the order of `names`) converted, every other field deferred (read
    on access). `names` are field names (`account`, not `account_id`)."""
    attnames, plan = _read_shape(model, names)
    if len(values) != len(plan):
        raise ValueError(f"{len(values)} values for {len(plan)} fields")
    return model.from_db(connection.alias, attnames, [convert(values[i]) for i, convert in plan])
