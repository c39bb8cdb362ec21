"""Settlement at resolution (docs/engine-rules.md §7): winners 1, losers 0, void 0.5, as
SETTLEMENT ledger entries and `kind: "settlement"` items of the trades feed; ambiguous and
closed accounts untouched; live orders cancelled; idempotent; the signal path."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from accounts.models import Account, LedgerEntry, Position
from marketdata import resolution as rs
from marketdata.models import MarketResolution
from marketdata.services import market_apply_verdict
from tests.trading.conftest import audit_clean, make_market, open_account, publish_book
from trading import tasks
from trading.models import Fill, Order
from trading.services import account_close, market_settle, markets_settle_pending, order_place

pytestmark = pytest.mark.django_db


@pytest.fixture
def market():
    m, yes, no = make_market()
    publish_book(yes.token_id, asks=[("0.40", "1000")], bids=[("0.38", "1000")])
    publish_book(no.token_id, asks=[("0.55", "1000")], bids=[("0.52", "1000")])
    return m, yes, no


def buy(account, token, size, price):
    return order_place(
        account_id=account.pk,
        token_id=token.token_id,
        side="BUY",
        type="limit",
        price=price,
        size=size,
    )


def resolve(m, yes, no, state, winner=None) -> MarketResolution:
    verdict = rs.ResolutionVerdict(
        state, m.condition_id, (yes.token_id, no.token_id), winner_token_id=winner
    )
    resolution = market_apply_verdict(market=m, verdict=verdict, source="clob")
    assert resolution is not None
    return resolution


def refreshed(account):
    return Account.objects.get(pk=account.pk)


def test_winner_paid_one_loser_zero(market):
    m, yes, no = market
    winner, loser = open_account("1000"), open_account("1000")
    buy(winner, yes, "100", "0.40")  # cost 40.00, cash 960
    buy(loser, no, "50", "0.55")  # cost 27.50, cash 972.50
    result = market_settle(resolution_id=resolve(m, yes, no, rs.RESOLVED, yes.token_id).pk)
    assert (result.positions, result.accounts, result.paid, result.consumed) == (2, 2, D(100), True)

    w, lo = refreshed(winner), refreshed(loser)
    assert w.cash == D("1060.00") and w.realized_pnl == D("60.00")
    assert lo.cash == D("972.50") and lo.realized_pnl == D("-27.50")
    wpos = Position.objects.get(account=winner)
    assert (wpos.status, wpos.size, wpos.realized_pnl) == ("settled", D(0), D("60.00"))
    assert Position.objects.get(account=loser).status == "settled"

    kinds = list(LedgerEntry.objects.filter(account=winner).order_by("id").values_list("kind"))
    assert [k for (k,) in kinds] == ["INITIAL_DEPOSIT", "TRADE", "SETTLEMENT"]
    settle_w = LedgerEntry.objects.get(account=winner, kind="SETTLEMENT")
    settle_l = LedgerEntry.objects.get(account=loser, kind="SETTLEMENT")
    assert settle_w.amount == D("100.00") and settle_l.amount == D("0")  # zero entry is written
    fill = Fill.objects.get(account=winner, kind="settlement")
    assert (fill.side, fill.price, fill.size, fill.notional, fill.fee) == (
        "SELL",
        D(1),
        D(100),
        D("100.00"),
        D(0),
    )
    assert fill.seq == 2 and fill.liquidity is None and fill.price_source == "resolution"
    assert settle_w.fill_id == fill.pk and refreshed(winner).last_fill_seq == 2
    lfill = Fill.objects.get(account=loser, kind="settlement")
    assert (lfill.price, lfill.notional, lfill.realized_pnl) == (D(0), D(0), D("-27.50"))
    audit_clean()


def test_void_pays_half(market):
    m, yes, no = market
    account = open_account("1000")
    buy(account, yes, "100", "0.40")
    buy(account, no, "20", "0.55")  # cost 11.00
    market_settle(resolution_id=resolve(m, yes, no, rs.VOID).pk)
    a = refreshed(account)
    # 1000 − 40 − 11 + 50 + 10 = 1009; realized (50 − 40) + (10 − 11) = 9
    assert a.cash == D("1009.00") and a.realized_pnl == D("9.00")
    assert sorted(Fill.objects.filter(kind="settlement").values_list("price", flat=True)) == [
        D("0.5"),
        D("0.5"),
    ]
    assert LedgerEntry.objects.filter(account=account, kind="SETTLEMENT").count() == 2
    audit_clean()


def test_ambiguous_settles_nothing(market):
    m, yes, no = market
    account = open_account("1000")
    buy(account, yes, "100", "0.40")
    resolution = resolve(m, yes, no, rs.AMBIGUOUS)
    result = market_settle(resolution_id=resolution.pk)
    assert result.settleable is False and result.positions == 0
    assert Position.objects.get(account=account).status == "open"
    assert not Fill.objects.filter(kind="settlement").exists()
    resolution.refresh_from_db()
    assert resolution.consumed_at is None
    assert markets_settle_pending() == 0


def test_closed_account_is_sealed(market):
    m, yes, no = market
    account = open_account("1000")
    buy(account, yes, "100", "0.40")
    account_close(account=account)
    before = refreshed(account)
    result = market_settle(resolution_id=resolve(m, yes, no, rs.RESOLVED, yes.token_id).pk)
    assert result.accounts_closed_skipped == 1 and result.positions == 0 and result.consumed
    after = refreshed(account)
    assert (after.cash, after.realized_pnl, after.last_fill_seq) == (
        before.cash,
        before.realized_pnl,
        before.last_fill_seq,
    )
    assert Position.objects.get(account=account).status == "open"
    assert not LedgerEntry.objects.filter(account=account, kind="SETTLEMENT").exists()
    audit_clean()


def test_live_orders_in_the_market_are_cancelled_and_released(market):
    m, yes, no = market
    _other, other_yes, _ = make_market()
    publish_book(other_yes.token_id, asks=[("0.60", "100")], bids=[("0.10", "100")])
    account = open_account("1000")
    buy(account, yes, "100", "0.40")
    resting_buy = buy(account, no, "10", "0.30").order  # reserves 3.00
    resting_sell = order_place(
        account_id=account.pk,
        token_id=yes.token_id,
        side="SELL",
        type="limit",
        price="0.90",
        size="40",
    ).order
    elsewhere = buy(account, other_yes, "10", "0.20").order  # another market: stays live
    assert refreshed(account).reserved_cash == D("5.00")
    result = market_settle(resolution_id=resolve(m, yes, no, rs.RESOLVED, yes.token_id).pk)
    assert result.orders_cancelled == 2
    for order in (resting_buy, resting_sell):
        order.refresh_from_db()
        assert (order.status, order.reason) == ("canceled", "MARKET_RESOLVED")
        assert order.reserved_cash == 0 and order.reserved_shares == 0
    elsewhere.refresh_from_db()
    assert elsewhere.status == "live"
    a = refreshed(account)
    assert a.reserved_cash == D("2.00") and a.cash == D("1060.00")
    pos = Position.objects.get(account=account, token_id=yes.token_id)
    assert (pos.status, pos.size, pos.reserved_size) == ("settled", D(0), D(0))
    assert Fill.objects.get(kind="settlement").size == D(100)  # all shares, SELL cancelled
    audit_clean()


def test_second_settle_is_a_noop(market):
    m, yes, no = market
    account = open_account("1000")
    buy(account, yes, "100", "0.40")
    resolution = resolve(m, yes, no, rs.RESOLVED, yes.token_id)
    market_settle(resolution_id=resolution.pk)
    again = market_settle(resolution_id=resolution.pk)
    assert again.positions == 0 and again.paid == 0 and again.consumed is False
    assert markets_settle_pending() == 0
    assert tasks.settle_pending() == 0
    assert LedgerEntry.objects.filter(account=account, kind="SETTLEMENT").count() == 1
    assert Fill.objects.filter(account=account, kind="settlement").count() == 1
    assert refreshed(account).cash == D("1060.00")
    audit_clean()


def test_pending_sweep_settles_unconsumed(market):
    m, yes, no = market
    account = open_account("1000")
    buy(account, yes, "100", "0.40")
    resolution = resolve(m, yes, no, rs.RESOLVED, no.token_id)
    assert tasks.settle_pending() == 1
    resolution.refresh_from_db()
    assert resolution.consumed_at is not None
    assert refreshed(account).cash == D("960.00")
    audit_clean()


def test_settlement_items_in_the_partner_trades_feed(market, partner, tenant):
    m, yes, no = market
    account = open_account("1000", tenant=tenant)
    buy(account, yes, "100", "0.40")
    market_settle(resolution_id=resolve(m, yes, no, rs.RESOLVED, yes.token_id).pk)
    response = partner.get(f"/v1/partner/accounts/{account.pk}/trades")
    assert response.status_code == 200, response.content
    items = response.json()["data"]
    assert [i["kind"] for i in items] == ["fill", "settlement"]
    item = items[1]
    assert item["side"] == "SELL" and D(item["price"]) == 1 and D(item["size"]) == 100
    assert D(item["notional"]) == D(100) and D(item["realized_pnl"]) == D(60)
    assert item["order_id"] is None and item["liquidity"] is None
    assert item["price_source"] == "resolution" and item["market_id"] == m.condition_id


def test_signal_path_settles_on_commit(market, django_capture_on_commit_callbacks):
    m, yes, no = market
    account = open_account("1000")
    buy(account, yes, "100", "0.40")
    with django_capture_on_commit_callbacks(execute=True):
        resolution = resolve(m, yes, no, rs.RESOLVED, yes.token_id)
    resolution.refresh_from_db()
    assert resolution.consumed_at is not None
    assert refreshed(account).cash == D("1060.00")
    assert Fill.objects.filter(account=account, kind="settlement").count() == 1
    assert Order.objects.filter(account=account, status="live").count() == 0
    audit_clean()


def test_signal_path_leaves_an_unheld_market_to_the_sweep(
    market, django_capture_on_commit_callbacks
):
    m, yes, no = market
    with django_capture_on_commit_callbacks(execute=True):
        resolution = resolve(m, yes, no, rs.RESOLVED, yes.token_id)
    resolution.refresh_from_db()
    assert resolution.consumed_at is None
    assert tasks.settle_pending() == 0
    resolution.refresh_from_db()
    assert resolution.consumed_at is not None


def halt(m, yes, no) -> None:
    verdict = rs.ResolutionVerdict(rs.CLOSED_PENDING, m.condition_id, (yes.token_id, no.token_id))
    assert market_apply_verdict(market=m, verdict=verdict, source="clob") is None


def test_a_market_closing_cancels_its_resting_orders_on_commit(
    market, django_capture_on_commit_callbacks
):
    m, yes, no = market
    _other, other_yes, _ = make_market()
    publish_book(other_yes.token_id, asks=[("0.60", "100")], bids=[("0.10", "100")])
    account = open_account("1000")
    buy(account, yes, "100", "0.40")  # a position: it waits for the result, untouched
    resting = buy(account, no, "10", "0.30").order  # reserves 3.00
    elsewhere = buy(account, other_yes, "10", "0.20").order  # another market: stays live
    with django_capture_on_commit_callbacks(execute=True):
        halt(m, yes, no)
    m.refresh_from_db()
    assert m.status == "closed"
    resting.refresh_from_db()
    assert (resting.status, resting.reason, resting.reserved_cash) == (
        "canceled",
        "MARKET_RESOLVED",
        D(0),
    )
    elsewhere.refresh_from_db()
    assert elsewhere.status == "live"
    a = refreshed(account)
    assert a.reserved_cash == D("2.00") and a.cash == D("960.00")
    position = Position.objects.get(account=account, token_id=yes.token_id)
    assert (position.status, position.size) == ("open", D(100))
    audit_clean()


def test_the_sweep_cancels_orders_a_lost_signal_left_live_in_halted_markets(market):
    m, yes, no = market
    account = open_account("1000")
    resting = buy(account, yes, "10", "0.30").order
    other_outcome = buy(account, no, "10", "0.50").order
    halt(m, yes, no)  # no on-commit callbacks run here: as if the signal's task was lost
    resting.refresh_from_db()
    assert resting.status == "live"
    assert tasks.orders_cancel_halted() == 2
    assert tasks.orders_cancel_halted() == 0  # idempotent
    for order in (resting, other_outcome):
        order.refresh_from_db()
        assert (order.status, order.reason) == ("canceled", "MARKET_RESOLVED")
    assert refreshed(account).reserved_cash == 0
    audit_clean()


def test_the_sweep_leaves_open_markets_alone(market):
    _m, yes, _no = market
    account = open_account("1000")
    resting = buy(account, yes, "10", "0.30").order
    assert tasks.orders_cancel_halted() == 0
    resting.refresh_from_db()
    assert resting.status == "live"


# --- A resolution only one REST source reports ---------------------------------------------------
@pytest.fixture
def fake_polymarket(settings):
    from devtools.fakepoly import DEMO_DATA_DIR, FakePolymarket
    from marketdata.tasks import discover_markets

    server = FakePolymarket(DEMO_DATA_DIR, seed=3).start_in_thread()
    settings.POLYMARKET_GAMMA_URL = server.gamma_url
    settings.POLYMARKET_CLOB_URL = server.clob_url
    try:
        discover_markets(include_closed=True)
        yield server
    finally:
        server.stop()


def held_demo_market(fake):
    from marketdata.models import Market, Token

    market = Market.objects.get(slug__startswith="synthetic-port-ellis")
    yes_id, no_id = fake.pairs[market.condition_id]
    yes = Token.objects.get(token_id=yes_id)
    publish_book(yes_id, asks=[("0.40", "1000")], bids=[("0.38", "1000")])
    account = open_account("1000")
    buy(account, yes, "100", "0.40")  # cost 40.00
    return market, yes_id, no_id, account


@pytest.mark.parametrize("source", ["gamma", "clob"])
def test_a_held_market_resolved_on_one_rest_source_alone_is_settled(
    fake_polymarket, source, django_capture_on_commit_callbacks
):
    from marketdata.tasks import check_held_markets

    market, yes_id, _no_id, account = held_demo_market(fake_polymarket)
    fake_polymarket.resolve_market(market.condition_id, yes_id, sources=(source,))
    with django_capture_on_commit_callbacks(execute=True):
        check_held_markets()
    market.refresh_from_db()
    assert market.status == "resolved"
    assert market.resolution.source == source
    assert refreshed(account).cash == D("1060.00")  # 960 + 100 × 1
    assert Fill.objects.filter(account=account, kind="settlement").count() == 1
    audit_clean()


def test_the_held_market_check_leaves_open_markets_open(fake_polymarket):
    from marketdata.tasks import check_held_markets

    market, _yes_id, _no_id, account = held_demo_market(fake_polymarket)
    result = check_held_markets()
    assert result["markets_seen"] == 1 and not result["errors"]
    market.refresh_from_db()
    assert market.status == "open"
    assert Position.objects.get(account=account, token_id=_yes_id).status == "open"
