"""Fixed SQL for hot write paths: model rows in and out without the ORM's query building.

Building an ORM query (compiling the SELECT, the INSERT of a bulk_create, an UPDATE of a
queryset) costs more CPU than running it on a small indexed statement; the order placement
path runs a dozen of them per order. These helpers keep the ORM's *values* semantics — every
value written goes through its field's `get_db_prep_save` (so UUIDs, datetimes, decimals and
JSON are stored exactly as the ORM stores them; the values it hands back unchanged skip the
call), and values read go through core.db's converters — but
the SQL text is built once per shape and cached.

`run_statements` sends several statements in ONE round trip on PostgreSQL (values merged
into the text as psycopg's client-side binding cursor merges them — `mogrify`, exactly what
its `execute` does; `literal` writes the common types the same way for less CPU — and the
list sent with the simple query protocol, which takes a `;`-separated list; they run in
order inside the caller's transaction and the first error aborts it, as separate
statements would), and one by one with server-side binding (which takes one statement per
query).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from functools import cache
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, connection, connections, models

from core.db import db_datetime, db_json, db_uuid

M = TypeVar("M", bound=models.Model)
Statement = tuple[str, list[Any]]


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


# --- writing ----------------------------------------------------------------------------------
def _has_pre_save(field: models.Field[Any, Any]) -> bool:
    """Whether the field computes its value on save (auto_now/auto_now_add date fields, or
    any field class that overrides pre_save); the others save their attribute as is."""
    if isinstance(field, models.DateField):
        return bool(field.auto_now or field.auto_now_add)
    return type(field).pre_save is not models.Field.pre_save


# Field classes whose get_db_prep_save hands values of one type back unchanged (to_python and
# PostgreSQL's adapt_* are identities for them).
_PLAIN_TYPES: dict[type, type] = {
    models.CharField: str,
    models.TextField: str,
    models.DecimalField: Decimal,
    models.UUIDField: uuid.UUID,
    models.DateTimeField: dt.datetime,
    models.BooleanField: bool,
}


def _plain_type(field: models.Field[Any, Any]) -> type | None:
    target = field.target_field if isinstance(field, models.ForeignKey) else field
    return _PLAIN_TYPES.get(type(target))


def _prep(field: models.Field[Any, Any], plain: type | None, value: Any, conn: Any) -> Any:
    """`field.get_db_prep_save(value, conn)`, without the call where it returns the value
    unchanged: None for a nullable field, and a value of the field's plain
    type — any str for text fields (choices members included), a finite Decimal, a UUID,
    an aware datetime, a bool. Tests compare the statements with the full call's."""
    if plain is not None:
        if value is None:
            if field.null:
                return None
        elif plain is str:
            if isinstance(value, str):
                return value
        elif type(value) is plain:
            if isinstance(value, Decimal):
                if value.is_finite():
                    return value
            elif isinstance(value, dt.datetime):
                if value.utcoffset() is not None:
                    return value
            else:
                return value
    return field.get_db_prep_save(value, conn)


@cache
def _insert_shape(
    model: type[models.Model], with_pk: bool
) -> tuple[str, str, list[tuple[models.Field[Any, Any], str, bool, type | None]]]:
    opts = model._meta
    fields = [f for f in opts.concrete_fields if with_pk or not f.primary_key]
    qn = connection.ops.quote_name
    columns = ", ".join(qn(f.column) for f in fields)
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    plan = [(f, f.attname, _has_pre_save(f), _plain_type(f)) for f in fields]
    return f"INSERT INTO {qn(opts.db_table)} ({columns}) VALUES ", row, plan


def insert_objects(objs: Sequence[models.Model]) -> Statement:
    """One multi-row INSERT of unsaved instances of one model, every concrete field as the
    ORM's `bulk_create` would write it (`pre_save` for auto_now fields, then
    `get_db_prep_save`, or its result without the call where that is the value itself).
    The primary key is written when the instances carry one (UUID keys); auto-increment
    keys are left to the database and stay None on the instances. Marks the instances
    saved (`_state.adding` False) — the caller executes the statement in its
    transaction."""
    model = type(objs[0])
    with_pk = objs[0].pk is not None
    prefix, row, plan = _insert_shape(model, with_pk)
    conn = connections[DEFAULT_DB_ALIAS]  # the real one: the proxy costs a lookup per use
    params: list[Any] = []
    for obj in objs:
        for f, attname, pre_save, plain in plan:
            value = f.pre_save(obj, True) if pre_save else getattr(obj, attname)
            params.append(_prep(f, plain, value, conn))
        obj._state.adding = False
        obj._state.db = conn.alias
    return prefix + ", ".join([row] * len(objs)), params


@cache
def _update_shape(model: type[models.Model], names: tuple[str, ...]) -> tuple[str, list[Any]]:
    opts = model._meta
    qn = connection.ops.quote_name
    fields = [_field(model, n) for n in names]
    sets = ", ".join(f"{qn(str(f.column))} = %s" for f in fields)
    return f"UPDATE {qn(opts.db_table)} SET {sets} WHERE {qn(opts.pk.column)} = %s", fields


def update_fields(model: type[models.Model], pk: Any, values: dict[str, Any]) -> Statement:
    """UPDATE one row by primary key, setting `values` (field name → value) as the ORM's
    `queryset.update` would store them."""
    names = tuple(values)
    sql, fields = _update_shape(model, names)
    conn = connections[DEFAULT_DB_ALIAS]
    params = [_prep(f, _plain_type(f), values[f.name], conn) for f in fields]
    params.append(model._meta.pk.get_db_prep_save(pk, conn))
    return sql, params


def run_statements(statements: Sequence[Statement]) -> None:
    """Execute these writes in order, in ONE round trip (see the module docstring; one by one
    with server-side binding). Runs inside the caller's transaction."""
    if not statements:
        return
    with connection.cursor() as cursor:
        if len(statements) > 1 and _multi_statement(cursor):
            # Each statement merged with its values by the driver on its own (psycopg caches
            # the parse of short statements; the joined text would be parsed every time),
            # then the list sent as it is: no placeholders left to interpret.
            cursor.execute(_merged(cursor, statements))
            return
        for sql, params in statements:
            cursor.execute(sql, params)


def fetch_statements(
    statements: Sequence[Statement], *, joined: bool = False, db: Any = None
) -> list[list[tuple[Any, ...]]]:
    """The rows of each of these SELECTs, in ONE round trip (as `run_statements`; the driver
    hands back one result per statement). `joined`: for a few SHORT statements with few
    values, send them as one text merged with all the values in one pass, which psycopg
    keeps parsed in its cache (at most 50 values and 4,096 characters); the default merges
    statement by statement, the right choice for long ones, whose joined text would be parsed
    on every call. `db`: the connection, when the caller already holds it (default: the
    default connection)."""
    out: list[list[tuple[Any, ...]]] = []
    with (connection if db is None else db).cursor() as cursor:
        if len(statements) > 1 and _multi_statement(cursor):
            if joined:
                sql = _joined(tuple(sql for sql, _ in statements))
                cursor.execute(sql, [p for _, params in statements for p in params])
            else:
                cursor.execute(_merged(cursor, statements))
            out.append(cursor.fetchall())
            while cursor.nextset():
                out.append(cursor.fetchall())
            if len(out) != len(statements):
                raise AssertionError(f"{len(out)} results for {len(statements)} statements")
            return out
        for sql, params in statements:
            cursor.execute(sql, params)
            out.append(cursor.fetchall())
    return out


@cache
def _joined(statements: tuple[str, ...]) -> str:
    return ";\n".join(statements)


def run_bound(db: Any, sql: str, params: dict[str, Any]) -> None:
    """Execute one PostgreSQL statement with server-side binding (psycopg's `Cursor`, not the
    client-side `ClientCursor` Django uses: the values go apart from the text, converted by
    the driver's C adapters, and no text is merged), through Django's cursor wrapper (errors,
    execute wrappers, query logging). Runs inside the caller's transaction."""
    import psycopg
    from django.db.backends.utils import CursorDebugWrapper, CursorWrapper

    wrapper = CursorDebugWrapper if db.queries_logged else CursorWrapper
    cursor = wrapper(psycopg.Cursor(db.connection), db)
    with cursor:
        cursor.execute(sql, params)


def _merged(cursor: Any, statements: Sequence[Statement]) -> str:
    """The statements as one `;`-separated text, each merged with its values as psycopg's
    `mogrify` merges them (exactly what `execute` would send): the common values by
    `literal`, everything else by psycopg itself; a value it cannot adapt is a Django
    DatabaseError, as from `execute`."""
    mogrify = cursor.cursor.mogrify
    texts = []
    with connection.wrap_database_errors:
        for sql, params in statements:
            parts = _placeholder_split(sql)
            if parts is None or len(parts) != len(params) + 1:
                texts.append(mogrify(sql, params))  # psycopg parses it (and raises)
                continue
            pieces = [parts[0]]
            for value, part in zip(params, parts[1:], strict=True):
                text = literal(value)
                pieces.append(mogrify("%s", [value]) if text is None else text)
                pieces.append(part)
            texts.append("".join(pieces))
    return ";\n".join(texts)


@cache
def _placeholder_split(sql: str) -> tuple[str, ...] | None:
    """The text around each `%s` of `sql`; None when it holds any other `%` sequence
    (`%%`, named or binary placeholders), which only psycopg's own parser interprets."""
    parts = tuple(sql.split("%s"))
    return None if any("%" in part for part in parts) else parts


def _integer_types() -> frozenset[type]:
    """int, and the int wrappers Django's PostgreSQL backend passes integer fields as."""
    try:
        from psycopg.types.numeric import Int2, Int4, Int8, IntNumeric
    except ImportError:  # not on psycopg
        return frozenset({int})
    return frozenset({int, Int2, Int4, Int8, IntNumeric})


_INTEGERS = _integer_types()


def literal(value: Any) -> str | None:
    """`value` as a PostgreSQL literal exactly as psycopg's `mogrify` writes it, for the
    types of the hot write paths: None, bool, int (and psycopg's Int2/4/8 wrappers), finite
    Decimal, str without backslash or NUL (and str subclasses such as TextChoices members:
    their text), UUID, aware datetime, date. None for anything else (the caller asks
    psycopg). Negative numbers get a leading space, as psycopg's (so that `-` never follows
    another `-`); tests compare the two."""
    if value is None:
        return "NULL"
    kind = type(value)
    if kind is Decimal:
        if not value.is_finite():
            return None
        text = str(value)
        return " " + text if value.is_signed() else text
    if isinstance(value, str):
        if "\\" in value or "\x00" in value:
            return None
        return "'" + value.replace("'", "''") + "'"
    if kind in _INTEGERS:
        return str(value) if value >= 0 else " " + str(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is uuid.UUID:
        return "'" + value.hex + "'::uuid"
    if kind is dt.datetime:
        if value.tzinfo is None or value.year < 1000:
            return None
        return "'" + str(value) + "'::timestamptz"
    if kind is dt.date and value.year >= 1000:
        return "'" + value.isoformat() + "'::date"
    return None


def _multi_statement(cursor: Any) -> bool:
    """Whether this cursor sends a `;`-separated list in one round trip: psycopg's
    client-side binding cursor (Django's default) does; server-side binding (OPTIONS
    server_side_binding) does not."""
    from psycopg import ClientCursor

    return isinstance(cursor.cursor, ClientCursor)
