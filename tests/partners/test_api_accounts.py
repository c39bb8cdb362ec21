"""Accounts on the partner API: provisioning, the envelope, PATCH, close, reset, the feed."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone

from accounts.models import Account, EquitySnapshot, LedgerEntry, Position
from partners import keys
from tests.partners.test_api_auth import assert_error
from trading.models import Fill, Order

pytestmark = pytest.mark.django_db

ENVELOPE_FIELDS = {
    "account_id", "user_id", "external_id", "stage", "status", "epoch", "rules", "metadata",
    "starting_balance", "balance", "available_balance", "reserved_balance", "positions_value",
    "equity", "realized_pnl", "unrealized_pnl", "fees_paid", "high_water_mark", "drawdown",
    "drawdown_pct", "max_drawdown", "max_drawdown_pct", "day_start_equity", "day_start_at",
    "daily_pnl", "trading_days", "open_orders_count", "positions", "created_at", "updated_at",
    "closed_at", "last_reset_at", "as_of", "prices_as_of",
}  # fmt: skip
POSITION_FIELDS = {
    "token_id", "market_id", "market_question", "outcome", "size", "avg_price", "cost_basis",
    "mark_price", "mark_source", "market_value", "unrealized_pnl", "max_loss_at_resolution",
    "price_as_of",
}  # fmt: skip


@pytest.fixture
def trader(partner):
    return partner.post(
        "/v1/partner/users", {"external_id": "t-1", "email": "t1@example.com"}, format="json"
    ).json()


def open_account(client, user_id, external_id="acc-1", stage="challenge", balance="10000", **extra):
    return client.post(
        "/v1/partner/accounts",
        {
            "user_id": user_id,
            "external_id": external_id,
            "stage": stage,
            "starting_balance": balance,
            **extra,
        },
        format="json",
    )


def test_new_account_is_201_with_a_complete_envelope(partner, trader):
    response = open_account(partner, trader["user_id"], rules={"max_dd": "10"}, metadata={"a": 1})
    assert response.status_code == 201
    body = response.json()
    assert set(body) == ENVELOPE_FIELDS
    assert body["user_id"] == trader["user_id"]
    assert body["stage"] == "challenge" and body["status"] == "active" and body["epoch"] == 0
    assert body["rules"] == {"max_dd": "10"} and body["metadata"] == {"a": 1}
    for field in ("starting_balance", "balance", "available_balance", "equity", "high_water_mark",
                  "day_start_equity"):  # fmt: skip
        assert body[field] == "10000.00", field
    for field in ("reserved_balance", "positions_value", "realized_pnl", "unrealized_pnl",
                  "fees_paid", "drawdown", "max_drawdown", "daily_pnl"):  # fmt: skip
        assert body[field] == "0.00", field
    assert body["drawdown_pct"] == "0.00" and body["max_drawdown_pct"] == "0.00"
    assert body["positions"] == [] and body["open_orders_count"] == 0 and body["trading_days"] == 0
    assert body["closed_at"] is None and body["last_reset_at"] is None
    assert body["as_of"].endswith("Z")


def test_starting_balance_is_the_first_ledger_entry(partner, trader):
    account_id = open_account(partner, trader["user_id"], balance="2500.5").json()["account_id"]
    entries = list(LedgerEntry.objects.filter(account_id=account_id))
    assert [(e.kind, e.amount, e.balance_after) for e in entries] == [
        ("INITIAL_DEPOSIT", Decimal("2500.5"), Decimal("2500.5"))
    ]
    assert Account.objects.get(pk=account_id).cash == Decimal("2500.50")


def test_replay_is_200_with_the_same_account(partner, trader):
    first = open_account(partner, trader["user_id"]).json()
    replay = open_account(partner, trader["user_id"], balance="10000.00")
    assert replay.status_code == 200
    assert replay.json()["account_id"] == first["account_id"]
    assert Account.objects.count() == 1 and LedgerEntry.objects.count() == 1


@pytest.mark.parametrize("change", [{"stage": "funded"}, {"balance": "9999"}, {"user_id": "other"}])
def test_replay_with_different_values_is_409(partner, trader, change):
    open_account(partner, trader["user_id"])
    user_id = trader["user_id"]
    if change.get("user_id") == "other":
        user_id = partner.post(
            "/v1/partner/users", {"external_id": "t-2", "email": "t2@example.com"}, format="json"
        ).json()["user_id"]
        change = {}
    assert_error(open_account(partner, user_id, **change), 409, "EXTERNAL_ID_CONFLICT")
    assert Account.objects.count() == 1


@pytest.mark.parametrize(
    "balance",
    ["0", "-5", "10000000.01", "1.001", "abc", "NaN", "Infinity", 12.5, True, None, "1e3x", ""],
)
def test_bad_starting_balance_is_422(partner, trader, balance):
    response = open_account(partner, trader["user_id"], balance=balance)
    assert_error(response, 422, "VALIDATION_FAILED")
    assert "starting_balance" in response.json()["details"]
    assert Account.objects.count() == 0


def test_integer_and_max_starting_balance_are_accepted(partner, trader):
    assert open_account(partner, trader["user_id"], balance=500).status_code == 201
    big = open_account(partner, trader["user_id"], external_id="big", balance="10000000")
    assert big.json()["balance"] == "10000000.00"


@pytest.mark.parametrize(
    "body,field",
    [
        ({"stage": "pro"}, "stage"),
        ({"external_id": ""}, "external_id"),
        ({"rules": "strict"}, "rules"),
        ({"metadata": {"x": "y" * 20000}}, "metadata"),
        ({"color": "red"}, "color"),
    ],
)
def test_other_invalid_fields_are_422(partner, trader, body, field):
    payload = {"user_id": trader["user_id"], "external_id": "a", "stage": "demo",
               "starting_balance": "100", **body}  # fmt: skip
    response = partner.post("/v1/partner/accounts", payload, format="json")
    assert_error(response, 422, "VALIDATION_FAILED")
    assert field in response.json()["details"]


def test_account_for_unmapped_user_is_404(partner, other_partner):
    theirs = other_partner.post(
        "/v1/partner/users", {"external_id": "x", "email": "x@example.com"}, format="json"
    ).json()["user_id"]
    assert_error(open_account(partner, theirs), 404, "NOT_FOUND")


def test_envelope_is_readable_and_lists_filter(partner, trader):
    a = open_account(partner, trader["user_id"], "a", "demo").json()["account_id"]
    open_account(partner, trader["user_id"], "b", "funded")
    assert partner.get(f"/v1/partner/accounts/{a}").json()["external_id"] == "a"
    funded = partner.get("/v1/partner/accounts?stage=funded").json()["data"]
    assert [x["external_id"] for x in funded] == ["b"]
    mine = partner.get(f"/v1/partner/accounts?user_id={trader['user_id']}").json()["data"]
    assert len(mine) == 2 and mine[0]["user_id"] == trader["user_id"]
    assert partner.get("/v1/partner/accounts?user_id=junk").json()["data"] == []
    assert_error(partner.get("/v1/partner/accounts?stage=pro"), 422, "VALIDATION_FAILED")


def test_envelope_marks_positions_and_computes_equity_by_hand(partner, trader):
    account_id = open_account(partner, trader["user_id"]).json()["account_id"]
    account = Account.objects.get(pk=account_id)
    # Hand scenario: 100 shares bought at 0.40 (cost 40) for cash; last mark 0.55.
    LedgerEntry.objects.create(account=account, epoch=0, kind="TRADE", amount=Decimal("-40"),
                               balance_after=Decimal("9960"))  # fmt: skip
    Account.objects.filter(pk=account.pk).update(cash=Decimal("9960"))
    marked_at = timezone.now()
    Position.objects.create(
        account=account, epoch=0, token_id="tok-yes", market_id="0xabc", market_question="Q?",
        outcome="Yes", size=Decimal("100"), avg_price=Decimal("0.40"), cost_basis=Decimal("40"),
        last_mark=Decimal("0.55"), last_mark_at=marked_at,
    )  # fmt: skip
    body = partner.get(f"/v1/partner/accounts/{account_id}").json()
    assert body["balance"] == "9960.00"
    assert body["positions_value"] == "55.00"
    assert body["equity"] == "10015.00"
    assert body["unrealized_pnl"] == "15.00"
    assert body["high_water_mark"] == "10015.00"
    assert body["daily_pnl"] == "15.00"
    [position] = body["positions"]
    assert set(position) == POSITION_FIELDS
    assert position["mark_price"] == "0.55" and position["mark_source"] == "last_known"
    assert position["market_value"] == "55.00" and position["unrealized_pnl"] == "15.00"
    assert position["max_loss_at_resolution"] == "55.00"
    assert body["prices_as_of"] is not None


def test_drawdown_from_the_high_water_mark(partner, trader):
    account_id = open_account(partner, trader["user_id"], balance="1000").json()["account_id"]
    account = Account.objects.get(pk=account_id)
    Account.objects.filter(pk=account.pk).update(high_water_mark=Decimal("1250"))
    body = partner.get(f"/v1/partner/accounts/{account_id}").json()
    assert body["drawdown"] == "250.00"
    assert body["drawdown_pct"] == "20.00"
    assert body["max_drawdown"] == "250.00"


def test_day_start_equity_uses_the_tenant_boundary(partner, trader, tenant):
    tenant.day_boundary_tz = "America/New_York"
    tenant.day_boundary_time = dt.time(17, 0)
    tenant.save()
    keys.key_cache.clear()  # other processes pick tenant edits up within API_KEY_CACHE_SECONDS
    with time_machine.travel(dt.datetime(2026, 3, 2, 20, 0, tzinfo=dt.UTC), tick=False):
        account_id = open_account(partner, trader["user_id"], balance="1000").json()["account_id"]
    account = Account.objects.get(pk=account_id)
    # Equity rose to 1100 before the 17:00 New York boundary (22:00 UTC) of 3 March ...
    EquitySnapshot.objects.create(
        account=account, epoch=0, equity=Decimal("1100"), cash=Decimal("1000"),
        at=dt.datetime(2026, 3, 3, 21, 0, tzinfo=dt.UTC),
    )  # fmt: skip
    # ... and then 1200 after it.
    EquitySnapshot.objects.create(
        account=account, epoch=0, equity=Decimal("1200"), cash=Decimal("1000"),
        at=dt.datetime(2026, 3, 3, 23, 0, tzinfo=dt.UTC),
    )  # fmt: skip
    with time_machine.travel(dt.datetime(2026, 3, 4, 1, 0, tzinfo=dt.UTC), tick=False):
        body = partner.get(f"/v1/partner/accounts/{account_id}").json()
    assert body["day_start_equity"] == "1100.00"
    assert body["day_start_at"] == "2026-03-03T22:00:00Z"
    assert body["daily_pnl"] == "-100.00"


def test_patch_replaces_rules_and_metadata_whole(partner, trader):
    account_id = open_account(partner, trader["user_id"], rules={"a": 1, "b": 2}).json()[
        "account_id"
    ]
    response = partner.patch(
        f"/v1/partner/accounts/{account_id}", {"rules": {"c": 3}}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["rules"] == {"c": 3}
    both = partner.patch(
        f"/v1/partner/accounts/{account_id}", {"rules": {}, "metadata": {"m": True}}, format="json"
    ).json()
    assert both["rules"] == {} and both["metadata"] == {"m": True}


@pytest.mark.parametrize("field", ["stage", "starting_balance", "status", "balance", "external_id"])
def test_patch_other_fields_is_422_field_not_patchable(partner, trader, field):
    account_id = open_account(partner, trader["user_id"]).json()["account_id"]
    response = partner.patch(
        f"/v1/partner/accounts/{account_id}", {field: "x", "rules": {}}, format="json"
    )
    body = assert_error(response, 422, "FIELD_NOT_PATCHABLE")
    assert field in body["message"] and field in body["details"]
    assert Account.objects.get(pk=account_id).stage == "challenge"


def test_patch_bad_values_and_empty_body_are_422(partner, trader):
    account_id = open_account(partner, trader["user_id"]).json()["account_id"]
    url = f"/v1/partner/accounts/{account_id}"
    assert_error(partner.patch(url, {"rules": [1]}, format="json"), 422, "VALIDATION_FAILED")
    assert_error(partner.patch(url, {}, format="json"), 422, "VALIDATION_FAILED")


def test_close_freezes_and_is_repeatable(partner, trader):
    account_id = open_account(partner, trader["user_id"]).json()["account_id"]
    first = partner.post(f"/v1/partner/accounts/{account_id}/close")
    assert first.status_code == 200
    body = first.json()
    assert body["status"] == "closed" and body["closed_at"]
    assert Account.objects.get(pk=account_id).closed_equity == Decimal("10000")
    again = partner.post(f"/v1/partner/accounts/{account_id}/close")
    assert again.status_code == 200 and again.json()["closed_at"] == body["closed_at"]
    # Readable forever; no more changes.
    assert partner.get(f"/v1/partner/accounts/{account_id}").status_code == 200
    url = f"/v1/partner/accounts/{account_id}"
    assert_error(partner.patch(url, {"rules": {}}, format="json"), 409, "ACCOUNT_CLOSED")
    assert_error(partner.post(f"{url}/reset"), 409, "ACCOUNT_CLOSED")
    assert partner.get("/v1/partner/accounts?status=closed").json()["data"][0]["status"] == "closed"


def _live_order(account: Account, reserved: str) -> Order:
    Account.objects.filter(pk=account.pk).update(reserved_cash=Decimal(reserved))
    return Order.objects.create(
        account=account, epoch=account.epoch, token_id="tok", market_id="0xm", side="BUY",
        type="limit", time_in_force="GTC", price=Decimal("0.5"), size=Decimal("20"),
        status="live", reserved_cash=Decimal(reserved),
    )  # fmt: skip


def test_close_cancels_open_orders_and_releases_their_reservation(partner, trader):
    account_id = open_account(partner, trader["user_id"]).json()["account_id"]
    order = _live_order(Account.objects.get(pk=account_id), "10")
    assert partner.get(f"/v1/partner/accounts/{account_id}").json()["open_orders_count"] == 1
    body = partner.post(f"/v1/partner/accounts/{account_id}/close").json()
    order.refresh_from_db()
    assert (order.status, order.reason, order.reserved_cash) == ("canceled", "ACCOUNT_CLOSED", 0)
    assert body["reserved_balance"] == "0.00" and body["open_orders_count"] == 0


def test_reset_starts_a_new_epoch_at_the_starting_balance(partner, trader):
    account_id = open_account(partner, trader["user_id"], balance="1000").json()["account_id"]
    account = Account.objects.get(pk=account_id)
    LedgerEntry.objects.create(account=account, epoch=0, kind="TRADE", amount=Decimal("-300"),
                               balance_after=Decimal("700"))  # fmt: skip
    Account.objects.filter(pk=account.pk).update(cash=Decimal("700"), realized_pnl=Decimal("-300"),
                                                 trading_days=3)  # fmt: skip
    Position.objects.create(
        account=account, epoch=0, token_id="t", market_id="m",
        size=Decimal("10"), avg_price=Decimal("0.3"), cost_basis=Decimal("3"),
    )  # fmt: skip
    order = _live_order(Account.objects.get(pk=account_id), "5")
    response = partner.post(f"/v1/partner/accounts/{account_id}/reset")
    assert response.status_code == 200
    body = response.json()
    assert body["epoch"] == 1 and body["balance"] == "1000.00" and body["equity"] == "1000.00"
    assert body["realized_pnl"] == "0.00" and body["trading_days"] == 0
    assert body["positions"] == [] and body["last_reset_at"]
    assert body["high_water_mark"] == "1000.00" and body["max_drawdown"] == "0.00"
    order.refresh_from_db()
    assert (order.status, order.reason) == ("canceled", "ACCOUNT_RESET")
    assert Position.objects.get().status == "closed_by_reset"
    kinds = list(
        LedgerEntry.objects.filter(account_id=account_id).values_list("kind", "epoch", "amount")
    )
    assert kinds[-1] == ("RESET", 1, Decimal("300"))
    assert len(kinds) == 3  # history stays
    assert sum(a for _, _, a in kinds) == Decimal("1000")


def _fill(account: Account, seq: int, epoch: int = 0, **extra) -> Fill:
    return Fill.objects.create(
        account=account, seq=seq, epoch=epoch, token_id="tok", market_id="0xm",
        market_question="Will it?", outcome="Yes", side="BUY", price=Decimal("0.5"),
        size=Decimal("10"), notional=Decimal("5"), liquidity="taker", price_source="book",
        trigger_key=f"test:{account.pk}:{seq}", filled_at=timezone.now(), **extra,
    )  # fmt: skip


def test_trades_feed_pages_and_polls_without_missing_or_repeating(partner, trader):
    account_id = open_account(partner, trader["user_id"]).json()["account_id"]
    account = Account.objects.get(pk=account_id)
    url = f"/v1/partner/accounts/{account_id}/trades"
    empty = partner.get(url).json()
    assert empty["data"] == [] and empty["has_more"] is False and empty["next_cursor"]
    cursor = empty["next_cursor"]
    for seq in range(1, 6):
        _fill(account, seq)
    first = partner.get(f"{url}?limit=3&cursor={cursor}").json()
    assert [t["price"] for t in first["data"]] == ["0.5"] * 3 and first["has_more"] is True
    second = partner.get(f"{url}?limit=3&cursor={first['next_cursor']}").json()
    assert len(second["data"]) == 2 and second["has_more"] is False and second["next_cursor"]
    ids = [t["trade_id"] for t in first["data"] + second["data"]]
    assert len(set(ids)) == 5
    # Polling with the stored cursor returns nothing new, then exactly the new fill.
    idle = partner.get(f"{url}?cursor={second['next_cursor']}").json()
    assert idle["data"] == [] and idle["next_cursor"] == second["next_cursor"]
    _fill(account, 6, kind="settlement")
    new = partner.get(f"{url}?cursor={second['next_cursor']}").json()
    assert [t["kind"] for t in new["data"]] == ["settlement"]
    item = new["data"][0]
    assert set(item) == {
        "trade_id", "kind", "order_id", "account_id", "epoch", "market_id", "token_id",
        "market_question", "outcome", "side", "price", "size", "notional", "fee", "fee_rate_bps",
        "liquidity", "realized_pnl", "price_source", "book_as_of", "filled_at",
    }  # fmt: skip
    assert item["account_id"] == account_id and item["notional"] == "5.00"


def test_trades_feed_filters_by_epoch_and_since(partner, trader):
    account_id = open_account(partner, trader["user_id"]).json()["account_id"]
    account = Account.objects.get(pk=account_id)
    _fill(account, 1, epoch=0)
    _fill(account, 2, epoch=1)
    url = f"/v1/partner/accounts/{account_id}/trades"
    assert [t["epoch"] for t in partner.get(f"{url}?epoch=1").json()["data"]] == [1]
    future = (timezone.now() + dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert partner.get(f"{url}?since={future}").json()["data"] == []
    assert_error(partner.get(f"{url}?since=yesterday"), 422, "VALIDATION_FAILED")
    assert_error(partner.get(f"{url}?epoch=x"), 422, "VALIDATION_FAILED")


def test_trades_cursor_of_another_account_is_400(partner, trader):
    a = open_account(partner, trader["user_id"], "a").json()["account_id"]
    b = open_account(partner, trader["user_id"], "b").json()["account_id"]
    cursor = partner.get(f"/v1/partner/accounts/{a}/trades").json()["next_cursor"]
    assert_error(
        partner.get(f"/v1/partner/accounts/{b}/trades?cursor={cursor}"), 400, "INVALID_CURSOR"
    )


def test_unknown_and_malformed_account_ids_are_404(partner):
    for account_id in (uuid.uuid4(), "nope", "1", "%20"):
        assert_error(partner.get(f"/v1/partner/accounts/{account_id}"), 404, "NOT_FOUND")


def test_equity_series_buckets_snapshots_by_interval(partner, trader):
    with time_machine.travel(dt.datetime(2026, 4, 1, 9, 0, 30, tzinfo=dt.UTC), tick=False):
        account_id = open_account(partner, trader["user_id"], balance="1000").json()["account_id"]
    account = Account.objects.get(pk=account_id)
    for minute, equity in [(1, "1010"), (1, "990"), (1, "1005"), (3, "1020"), (70, "980")]:
        EquitySnapshot.objects.create(
            account=account, epoch=0, equity=Decimal(equity), cash=Decimal("1000"),
            at=dt.datetime(2026, 4, 1, 9, 0, 40, tzinfo=dt.UTC) + dt.timedelta(minutes=minute),
        )  # fmt: skip
    url = f"/v1/partner/accounts/{account_id}/equity"
    window = "from=2026-04-01T09:00:00Z&to=2026-04-01T11:00:00Z"
    minutes = partner.get(f"{url}?{window}&interval=1m").json()
    assert minutes["interval"] == "1m" and minutes["epoch"] == 0
    assert [p["t"] for p in minutes["points"]] == [
        "2026-04-01T09:00:00Z", "2026-04-01T09:01:00Z", "2026-04-01T09:03:00Z",
        "2026-04-01T10:10:00Z",
    ]  # fmt: skip
    assert minutes["points"][1] == {
        "t": "2026-04-01T09:01:00Z", "open": "1010.00", "high": "1010.00", "low": "990.00",
        "close": "1005.00",
    }  # fmt: skip
    hours = partner.get(f"{url}?{window}&interval=1h").json()["points"]
    assert [(p["t"], p["open"], p["high"], p["low"], p["close"]) for p in hours] == [
        ("2026-04-01T09:00:00Z", "1000.00", "1020.00", "990.00", "1020.00"),
        ("2026-04-01T10:00:00Z", "980.00", "980.00", "980.00", "980.00"),
    ]


def test_equity_series_rejects_bad_ranges(partner, trader):
    account_id = open_account(partner, trader["user_id"]).json()["account_id"]
    url = f"/v1/partner/accounts/{account_id}/equity"
    for query, field in [
        ("interval=5m", "interval"),
        ("from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
        ("from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z&interval=1m", "from"),
        ("to=tomorrow", "to"),
        ("epoch=last", "epoch"),
    ]:
        response = partner.get(f"{url}?{query}")
        assert_error(response, 422, "VALIDATION_FAILED")
        assert field in response.json()["details"], query
    default = partner.get(url).json()
    assert default["interval"] == "1h" and len(default["points"]) == 1


def test_idempotency_key_replays_and_refuses_reuse_through_the_api(partner, trader):
    body = {"user_id": trader["user_id"], "external_id": "idem", "stage": "demo",
            "starting_balance": "100"}  # fmt: skip
    first = partner.post("/v1/partner/accounts", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    replay = partner.post("/v1/partner/accounts", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == replay.status_code == 201
    assert replay.content == first.content
    assert replay["Idempotent-Replayed"] == "true"
    assert Account.objects.count() == 1
    reset_url = f"/v1/partner/accounts/{first.json()['account_id']}/reset"
    assert partner.post(reset_url, HTTP_IDEMPOTENCY_KEY="r-1").json()["epoch"] == 1
    assert partner.post(reset_url, HTTP_IDEMPOTENCY_KEY="r-1").json()["epoch"] == 1  # once
    assert partner.post(reset_url, HTTP_IDEMPOTENCY_KEY="r-2").json()["epoch"] == 2
    changed = {**body, "stage": "funded"}
    reused = partner.post(
        "/v1/partner/accounts", changed, format="json", HTTP_IDEMPOTENCY_KEY="k-1"
    )
    assert_error(reused, 422, "IDEMPOTENCY_KEY_REUSED")
    bad = partner.post("/v1/partner/accounts", body, format="json", HTTP_IDEMPOTENCY_KEY="a b")
    assert_error(bad, 422, "VALIDATION_FAILED")
