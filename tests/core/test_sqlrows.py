"""core.sqlrows: rows read with fixed SQL load exactly what the ORM loads."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection

from accounts.models import Account
from core.sqlrows import convert_row, model_from_row
from tests.trading.conftest import open_account

pytestmark = pytest.mark.django_db


def _same_fields(got, expected) -> None:
    for f in type(expected)._meta.concrete_fields:
        assert getattr(got, f.attname) == getattr(expected, f.attname), f.name


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
