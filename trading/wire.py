"""Wire shapes of trading's reads that both APIs send: the account-state envelope with its
positions (partner GET /accounts/{id}, trader GET /v1/accounts/{id}) and a trade (a fill)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from core.api.fields import IsoDateTimeField, MoneyField, PriceField, iso_utc
from core.money import wire
from trading.selectors import MarkedPosition

_iso = iso_utc


class PositionOutput(serializers.Serializer):
    token_id = serializers.CharField(source="position.token_id")
    market_id = serializers.CharField(source="position.market_id")
    market_question = serializers.CharField(source="position.market_question")
    outcome = serializers.CharField(source="position.outcome")
    size = PriceField(source="position.size")
    avg_price = PriceField(source="position.avg_price")
    cost_basis = MoneyField(source="position.cost_basis")
    mark_price = PriceField(source="mark.price")
    mark_source = serializers.CharField(source="mark.source")
    market_value = MoneyField()
    unrealized_pnl = MoneyField()
    max_loss_at_resolution = MoneyField()
    price_as_of = IsoDateTimeField(source="mark.as_of")


class AccountEnvelopeOutput(serializers.Serializer):
    """The account-state envelope (docs/partner-api.md)."""

    account_id = serializers.UUIDField(source="account.id")
    user_id = serializers.IntegerField(source="account.owner_id")
    external_id = serializers.CharField(source="account.external_id")
    stage = serializers.CharField(source="account.stage")
    status = serializers.CharField(source="account.status")
    epoch = serializers.IntegerField(source="account.epoch")
    rules = serializers.JSONField(source="account.rules")
    metadata = serializers.JSONField(source="account.metadata")
    starting_balance = MoneyField(source="account.starting_balance")
    balance = MoneyField()
    available_balance = MoneyField()
    reserved_balance = MoneyField()
    positions_value = MoneyField()
    equity = MoneyField()
    realized_pnl = MoneyField()
    unrealized_pnl = MoneyField()
    fees_paid = MoneyField()
    high_water_mark = MoneyField()
    drawdown = MoneyField()
    drawdown_pct = MoneyField()
    max_drawdown = MoneyField()
    max_drawdown_pct = MoneyField()
    day_start_equity = MoneyField()
    day_start_at = IsoDateTimeField()
    daily_pnl = MoneyField()
    trading_days = serializers.IntegerField()
    open_orders_count = serializers.IntegerField()
    positions = PositionOutput(many=True)
    created_at = IsoDateTimeField(source="account.created_at")
    updated_at = IsoDateTimeField(source="account.updated_at")
    closed_at = IsoDateTimeField(source="account.closed_at")
    last_reset_at = IsoDateTimeField(source="account.last_reset_at")
    as_of = IsoDateTimeField()
    prices_as_of = IsoDateTimeField()


class TradeOutput(serializers.Serializer):
    trade_id = serializers.UUIDField(source="id")
    kind = serializers.CharField()
    order_id = serializers.UUIDField(allow_null=True)
    account_id = serializers.UUIDField()
    epoch = serializers.IntegerField()
    market_id = serializers.CharField()
    token_id = serializers.CharField()
    market_question = serializers.CharField()
    outcome = serializers.CharField()
    side = serializers.CharField()
    price = PriceField()
    size = PriceField()
    notional = MoneyField()
    fee = MoneyField()
    fee_rate_bps = PriceField(allow_null=True)
    liquidity = serializers.CharField(allow_null=True)
    realized_pnl = MoneyField()
    price_source = serializers.CharField()
    book_as_of = IsoDateTimeField(allow_null=True)
    filled_at = IsoDateTimeField()


def _position_body(m: MarkedPosition) -> dict[str, Any]:
    p = m.position
    return {
        "token_id": p.token_id,
        "market_id": p.market_id,
        "market_question": p.market_question,
        "outcome": p.outcome,
        "size": wire(p.size, min_places=0),
        "avg_price": wire(p.avg_price, min_places=0),
        "cost_basis": wire(p.cost_basis),
        "mark_price": wire(m.mark.price, min_places=0),
        "mark_source": m.mark.source,
        "market_value": wire(m.market_value),
        "unrealized_pnl": wire(m.unrealized_pnl),
        "max_loss_at_resolution": wire(m.max_loss_at_resolution),
        "price_as_of": _iso(m.mark.as_of),
    }


_ENVELOPE_MONEY = (
    "balance", "available_balance", "reserved_balance", "positions_value", "equity",
    "realized_pnl", "unrealized_pnl", "fees_paid", "high_water_mark", "drawdown",
    "drawdown_pct", "max_drawdown", "max_drawdown_pct", "day_start_equity", "daily_pnl",
)  # fmt: skip


def envelope_body(state: dict[str, Any]) -> dict[str, Any]:
    """The envelope as AccountEnvelopeOutput documents it, built directly: this is the hottest
    partner read and DRF's per-instance field copying cost more than the rest of the
    rendering (a test keeps the two shapes identical)."""
    row = state["account"]
    body: dict[str, Any] = {
        "account_id": str(row.id),
        "user_id": row.owner_id,
        "external_id": row.external_id,
        "stage": row.stage,
        "status": row.status,
        "epoch": row.epoch,
        "rules": row.rules,
        "metadata": row.metadata,
        "starting_balance": wire(row.starting_balance),
    }
    for name in _ENVELOPE_MONEY:
        body[name] = wire(state[name])
    body.update(
        day_start_at=_iso(state["day_start_at"]),
        trading_days=state["trading_days"],
        open_orders_count=state["open_orders_count"],
        positions=[_position_body(m) for m in state["positions"]],
        created_at=_iso(row.created_at),
        updated_at=_iso(row.updated_at),
        closed_at=_iso(row.closed_at),
        last_reset_at=_iso(row.last_reset_at),
        as_of=_iso(state["as_of"]),
        prices_as_of=_iso(state["prices_as_of"]),
    )
    return body
