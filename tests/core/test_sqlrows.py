"""core.sqlrows: fixed-SQL rows in and out must store and load exactly what the ORM does, and
several writes go in one round trip."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from enum import IntEnum

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from hypothesis import given, settings
from hypothesis import strategies as st

from accounts.models import Account, LedgerEntry, Position
from core.sqlrows import (
    convert_row,
    fetch_statements,
    insert_objects,
    literal,
    model_from_row,
    run_statements,
    update_fields,
)
from tests.trading.conftest import open_account
from trading.models import Fill, Order

pytestmark = pytest.mark.django_db


def _order(account: Account, **kw) -> Order:
    fields = {
        "account": account,
        "epoch": 0,
        "token_id": "tok",
        "market_id": "0xm",
        "side": "BUY",
        "type": "limit",
        "time_in_force": "GTD",
        "price": Decimal("0.55"),
        "size": Decimal("12.34"),
        "expiration": timezone.now() + dt.timedelta(hours=1),
        "post_only": True,
        "client_order_id": "c-1",
        "status": "live",
        "reserved_cash": Decimal("6.787000"),
        "queue_ahead": Decimal("100.5"),
    }
    fields.update(kw)
    return Order(**fields)


def _fill(account: Account, order: Order, n: int) -> Fill:
    return Fill(
        account=account,
        seq=n,
        epoch=0,
        order=order,
        token_id="tok",
        market_id="0xm",
        market_question="Will it? 100% 'quoted' %s",
        outcome="Yes",
        side="BUY",
        price=Decimal("0.51"),
        size=Decimal("3.333333"),
        notional=Decimal("1.699999"),
        fee=Decimal("0.01"),
        fee_rate_bps=Decimal("200.0000"),
        liquidity="taker",
        realized_pnl=Decimal("-0.01"),
        price_source="book",
        book_as_of=timezone.now() - dt.timedelta(seconds=1),
        book_hash="h",
        levels=[["0.51", "3.333333"], {"k": None}],
        vwap=Decimal("0.51"),
        mid_gap=None,
        trigger_key=f"t:{uuid.uuid4()}:{n}",
    )


def _same_fields(got, expected) -> None:
    for f in type(expected)._meta.concrete_fields:
        assert getattr(got, f.attname) == getattr(expected, f.attname), f.name


def test_inserted_rows_read_back_through_the_orm_as_written():
    account = open_account("100")
    order = _order(account)
    fills = [_fill(account, order, 1), _fill(account, order, 2)]
    position = Position(account=account, epoch=0, token_id="tok", market_id="0xm", size=1)
    with transaction.atomic():
        run_statements([insert_objects([order]), insert_objects(fills), insert_objects([position])])
    assert not order._state.adding and all(not f._state.adding for f in fills)
    assert order.updated_at is not None  # auto_now filled in, as save() does
    _same_fields(Order.objects.get(pk=order.pk), order)
    for fill in fills:
        _same_fields(Fill.objects.get(pk=fill.pk), fill)
    stored = Position.objects.get(account=account, token_id="tok")
    assert position.pk is None  # auto-increment keys are the database's
    assert stored.size == 1 and stored.status == Position.Status.OPEN


def test_model_from_row_loads_what_the_orm_loads_and_defers_the_rest():
    account = open_account("250.5")
    Account.objects.filter(pk=account.pk).update(
        last_trading_day=dt.date(2026, 5, 6),
        max_drawdown_pct=Decimal("12.3456"),
        rules={"a": [1, "2"]},
    )
    expected = Account.objects.get(pk=account.pk)
    names = tuple(f.name for f in Account._meta.concrete_fields)
    columns = ", ".join(Account._meta.get_field(n).column for n in names)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {columns} FROM accounts_account WHERE id = %s", [account.pk])
        row = cursor.fetchone()
    got = model_from_row(Account, names, row)
    _same_fields(got, expected)
    assert got.max_drawdown_pct.as_tuple().exponent == -4  # the field's places, as the ORM
    assert not got._state.adding and got.get_deferred_fields() == set()
    # Listed in any order: values follow `names`, the rest is deferred.
    partial = model_from_row(
        Account, ("cash", "id", "epoch"), (row[names.index("cash")], row[0], 7)
    )
    assert partial.pk == account.pk and partial.cash == expected.cash and partial.epoch == 7
    assert "status" in partial.get_deferred_fields()
    assert partial.status == expected.status  # loads on access
    assert convert_row(
        Account, ("cash", "last_trading_day"), (row[names.index("cash")], dt.date(2026, 5, 6))
    ) == [
        expected.cash,
        dt.date(2026, 5, 6),
    ]
    # An integer expression (COALESCE(..., 0)) at the column's places; a float never is money.
    (zero,) = convert_row(Account, ("cash",), (0,))
    assert zero == 0 and zero.as_tuple().exponent == expected.cash.as_tuple().exponent
    with pytest.raises(TypeError):
        convert_row(Account, ("cash",), (0.1,))


def test_update_fields_sets_only_the_named_columns():
    account = open_account("100")
    now = timezone.now()
    with transaction.atomic():
        run_statements(
            [
                update_fields(
                    Account, account.pk, {"reserved_cash": Decimal("1.5"), "updated_at": now}
                )
            ]
        )
    fresh = Account.objects.get(pk=account.pk)
    assert fresh.reserved_cash == Decimal("1.5") and fresh.updated_at == now
    assert fresh.cash == account.cash


def test_run_statements_one_round_trip_and_all_or_nothing():
    account = open_account("100")
    entries = [
        LedgerEntry(account=account, epoch=0, kind="TRADE", amount=-1, balance_after=99, memo="50%")
    ]
    statements = [
        insert_objects(entries),
        update_fields(Account, account.pk, {"cash": Decimal("99")}),
    ]
    with CaptureQueriesContext(connection) as ctx, transaction.atomic():
        run_statements(statements)
    writes = [q for q in ctx.captured_queries if not q["sql"].startswith(("BEGIN", "SAVEPOINT"))]
    writes = [q for q in writes if "RELEASE" not in q["sql"] and q["sql"] != "COMMIT"]
    assert len(writes) == 1
    assert Account.objects.get(pk=account.pk).cash == 99
    assert LedgerEntry.objects.get(account=account, kind="TRADE").memo == "50%"

    bad = [
        update_fields(Account, account.pk, {"cash": Decimal("98")}),
        update_fields(Account, account.pk, {"reserved_cash": Decimal("1000")}),  # > cash
    ]
    with pytest.raises(IntegrityError), transaction.atomic():
        run_statements(bad)
    assert Account.objects.get(pk=account.pk).cash == 99  # the first write went too


def test_fetch_statements_returns_each_result_in_one_round_trip():
    account = open_account("100")
    key = account.pk
    statements = [
        ("SELECT cash FROM accounts_account WHERE id = %s", [key]),
        ("SELECT id FROM accounts_account WHERE id = %s", ["0" * 32]),  # no row
        ("SELECT kind, memo FROM accounts_ledgerentry WHERE account_id = %s ORDER BY id", [key]),
    ]
    with CaptureQueriesContext(connection) as ctx:
        cash, missing, ledger = fetch_statements(statements)
    assert len(ctx.captured_queries) == 1
    assert [c for (c,) in cash] == [Decimal("100")]
    assert missing == []
    assert ledger == [("INITIAL_DEPOSIT", "")]


def _psycopg(value: object) -> str:
    with connection.cursor() as cursor:
        return str(cursor.cursor.mogrify("%s", [value]))


def test_literal_writes_what_psycopg_writes():
    from psycopg.types.numeric import Int2, Int4, Int8, IntNumeric

    values = [
        None,
        True,
        False,
        0,
        7,
        -7,
        2**70,
        -(2**70),
        Int2(3),
        Int4(0),
        Int4(-3),
        Int8(155),
        Int8(-(2**40)),
        IntNumeric(5),
        Decimal("0"),
        Decimal("-0"),
        Decimal("0E-6"),
        Decimal("-0.01980"),
        Decimal("1E+3"),
        Decimal("1.5E-10"),
        "",
        "9000021",
        "O'Hara's market?",
        "é ü 市场 🙂",
        "50%",
        Fill.Kind.FILL,
        Order.Status.MATCHED,
        uuid.uuid4(),
        dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        dt.datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=dt.UTC),
        timezone.now(),
        dt.datetime(2026, 7, 2, 3, 4, 5, 120, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        dt.date(2026, 1, 2),
    ]
    for value in values:
        text = literal(value)
        assert text is not None, value
        assert text == _psycopg(value), value


def test_literal_leaves_the_rest_to_psycopg():
    for value in [
        Decimal("NaN"),
        Decimal("-Infinity"),
        "back\\slash",
        "nul\x00",
        dt.datetime(2026, 1, 2, 3, 4, 5),  # naive
        dt.time(1, 2),
        dt.timedelta(days=1),
        1.5,
        [1, 2],
        IntEnum("Level", "LOW HIGH").HIGH,
    ]:
        assert literal(value) is None, value


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(
        st.integers(),
        st.decimals(allow_nan=False, allow_infinity=False),
        st.text(),
        st.uuids(),
        st.datetimes(timezones=st.timezones()),
        st.dates(),
    )
)
def test_literal_agrees_with_psycopg(value):
    text = literal(value)
    if text is not None:
        assert text == _psycopg(value)


def test_merged_statements_are_what_psycopg_would_send():
    from core.sqlrows import _merged

    account = open_account("100")
    order = _order(account)
    statements = [
        insert_objects([order]),
        insert_objects([_fill(account, order, 1), _fill(account, order, 2)]),
        update_fields(Account, account.pk, {"cash": Decimal("-1.5"), "updated_at": timezone.now()}),
        ("SELECT %s, '100%%'", ["a"]),  # psycopg's own parser for anything but %s
    ]
    with connection.cursor() as cursor:
        expected = ";\n".join(cursor.cursor.mogrify(sql, params) for sql, params in statements)
        assert _merged(cursor, statements) == expected


def test_values_that_skip_get_db_prep_save_write_the_same_statements():
    """insert_objects and update_fields pass plain values on without get_db_prep_save
    where it would hand them back unchanged: the statements are the ones the full calls
    give."""
    from accounts.models import EquitySnapshot

    account = open_account("100")
    order = _order(account, status=Order.Status.LIVE, client_order_id=None, expiration=None)
    now = timezone.now()
    entry = LedgerEntry(
        account=account,
        epoch=0,
        kind=LedgerEntry.Kind.TRADE,
        amount=Decimal("-1.98"),
        balance_after=Decimal("98.02"),
        order_id=order.pk,
        fill_id=None,
        memo="BUY 4 @ 0.5",
        created_at=now,
    )
    position = Position(
        account=account,
        epoch=0,
        token_id="t",
        market_id="m",
        market_question="Q?",
        size=Decimal("4"),
        avg_price=Decimal("0.5"),
        cost_basis=Decimal("2"),
        last_mark=None,
        opened_at=now,
    )
    snapshot = EquitySnapshot(
        account=account,
        epoch=0,
        at=now,
        equity=Decimal("99.9"),
        cash=Decimal("98"),
        positions_value=Decimal("1.9"),
    )
    batches = [
        [order, _order(account, side="SELL", amount=Decimal("-0"), reason="O'Hara")],
        [_fill(account, order, 1), _fill(account, order, 2)],
        [entry],
        [position],
        [snapshot],
    ]
    with connection.cursor() as cursor:
        mogrify = cursor.cursor.mogrify
        for objs in batches:
            sql, params = insert_objects(objs)
            opts = type(objs[0])._meta
            fields = [f for f in opts.concrete_fields if objs[0].pk or not f.primary_key]
            full = [
                f.get_db_prep_save(getattr(o, f.attname), connection) for o in objs for f in fields
            ]
            assert mogrify(sql, params) == mogrify(sql, full)
        values = {
            "cash": Decimal("99.5"),
            "realized_pnl": Decimal("-0.5"),
            "last_trading_day": now.date(),
            "last_fill_seq": 7,
            "updated_at": now,
            "closed_at": None,
            "stage": "funded",
            "external_id": None,
        }
        sql, params = update_fields(Account, account.pk, values)
        prep = Account._meta.get_field
        full = [prep(n).get_db_prep_save(v, connection) for n, v in values.items()]
        full.append(Account._meta.pk.get_db_prep_save(account.pk, connection))
        assert mogrify(sql, params) == mogrify(sql, full)
        naive = {"closed_at": dt.datetime(2026, 1, 2, 3, 4, 5)}  # made aware by Django
        with pytest.warns(RuntimeWarning, match="naive datetime"):
            sql, params = update_fields(Account, account.pk, naive)
        assert "timestamptz" in mogrify(sql, params)
