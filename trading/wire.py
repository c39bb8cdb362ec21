"""Wire shapes of trading's reads that both APIs send: the account-state envelope with its
positions (partner GET /accounts/{id}, trader GET /v1/accounts/{id}) and a trade (a fill).
Each serializer is the shape's one declaration: the OpenAPI schema, and the body through its
Shape (core.api.shapes)."""

from __future__ import annotations

from rest_framework import serializers

from core.api.fields import IsoDateTimeField, MoneyField, PriceField
from core.api.shapes import Shape


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
    price_as_of = IsoDateTimeField(
        source="mark.as_of",
        allow_null=True,
        help_text="When the mark's price was seen; null for a mark without one (cost)",
    )


class AccountEnvelopeOutput(serializers.Serializer):
    """The account-state envelope (docs/partner-api.md)."""

    account_id = serializers.UUIDField(source="account.id")
    user_id = serializers.IntegerField(source="account.owner_id")
    external_id = serializers.CharField(
        source="account.external_id", allow_null=True, help_text="null on a personal account"
    )
    stage = serializers.CharField(
        source="account.stage", allow_null=True, help_text="null on a personal account"
    )
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
    closed_at = IsoDateTimeField(source="account.closed_at", allow_null=True)
    last_reset_at = IsoDateTimeField(source="account.last_reset_at", allow_null=True)
    as_of = IsoDateTimeField()
    prices_as_of = IsoDateTimeField(
        allow_null=True, help_text="The oldest mark time; null when no position has one"
    )


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


ENVELOPE = Shape(AccountEnvelopeOutput)
TRADE = Shape(TradeOutput)
