"""`manage.py ledger audit`: clean after a full trading scenario, and non-zero naming the
violation when a row is corrupted behind the services' back."""

from __future__ import annotations

from decimal import Decimal as D
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.models import Account, Position
from tests.trading.conftest import make_market, open_account, publish_book
from trading.models import Fill, Order
from trading.services import order_cancel, order_place

pytestmark = pytest.mark.django_db


@pytest.fixture
def traded():
    _market, yes, _ = make_market(fees_enabled=True, fee_rate=D("0.05"), fee_exponent=D("1"))
    publish_book(yes.token_id, asks=[("0.50", "1000")], bids=[("0.45", "1000")])
    account = open_account("1000")

    def place(**kw):
        return order_place(account_id=account.pk, token_id=yes.token_id, **kw)

    place(side="BUY", type="limit", price="0.50", size="100")
    place(side="BUY", type="market", amount="20")
    resting = place(side="BUY", type="limit", price="0.40", size="50")
    place(side="SELL", type="limit", price="0.45", size="30")
    place(side="SELL", type="limit", price="0.60", size="20")  # rests, reserves 20 shares
    order_cancel(account_id=account.pk, order_id=resting.order.pk)
    place(side="BUY", type="limit", price="0.30", size="10")  # rests
    return account, yes


def audit(*args):
    out, err = StringIO(), StringIO()
    call_command("ledger", "audit", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def fails(*args):
    err = StringIO()
    with pytest.raises(CommandError) as exc:
        call_command("ledger", "audit", *args, stdout=StringIO(), stderr=err)
    assert exc.value.returncode == 1
    return err.getvalue()


def test_clean_after_trading(traded):
    account, _ = traded
    assert audit()[0].strip() == "ledger audit: OK"
    assert audit("--account", str(account.pk))[0].strip() == "ledger audit: OK"


def test_cash_edited_directly_is_named(traded):
    account, _ = traded
    Account.objects.filter(pk=account.pk).update(cash=D("999999"))
    err = fails()
    assert "cash != sum(ledger)" in err and str(account.pk) in err


def test_reserved_cash_drift_is_named(traded):
    account, _ = traded
    Account.objects.filter(pk=account.pk).update(reserved_cash=D("0"))
    assert "reserved_cash != sum(live orders' reserved_cash)" in fails("--account", str(account.pk))


def test_position_size_drift_is_named(traded):
    account, _yes = traded
    Position.objects.filter(account=account).update(size=D("5000"))
    assert "position size != sum(fills)" in fails()


def test_position_reservation_drift_is_named(traded):
    account, _ = traded
    Order.objects.filter(account=account, side="SELL", status="live").update(reserved_shares=D("1"))
    assert "position reserved != sum(live SELL reserved_shares)" in fails()


def test_fill_seq_gap_is_named(traded):
    account, _ = traded
    last = Fill.objects.filter(account=account).order_by("-seq").first()
    Fill.objects.filter(pk=last.pk).update(seq=last.seq + 5)
    assert "fill seq not gap-free" in fails()


def test_other_accounts_are_not_blamed(traded):
    account, _ = traded
    other = open_account("50")
    Account.objects.filter(pk=account.pk).update(cash=D("999"))
    assert audit("--account", str(other.pk))[0].strip() == "ledger audit: OK"
