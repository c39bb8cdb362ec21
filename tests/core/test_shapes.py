"""core.api.shapes.Shape: a serializer bound once validates as `is_valid` does and renders as
`.data` does (the one declaration of each wire shape; docs/benchmarks.md, "Wire shapes")."""

from __future__ import annotations

import pytest
from rest_framework import serializers

from trading.apis.orders import ORDER_INPUT, OrderListApi

TYPICAL = {
    "account_id": "5d2c39d6-d203-47c2-999f-4b8f4c470582",
    "token_id": "71321045679252212594626385532706912750332728571942532289631379312455583992563",
    "side": "BUY",
    "type": "market",
    "amount": "2",
}
BODIES = [
    TYPICAL,
    {**TYPICAL, "type": "limit", "price": "0.52", "size": "10", "time_in_force": "GTD",
     "expiration": 1_900_000_000, "post_only": True, "client_order_id": "bot-1"},
    [TYPICAL],
    {**TYPICAL, "extra": 1},
    {k: v for k, v in TYPICAL.items() if k != "side"},
    {**TYPICAL, "side": "buy"},
    {**TYPICAL, "amount": 2},
    {**TYPICAL, "amount": 2.5},
    {**TYPICAL, "amount": "-2"},
    {**TYPICAL, "amount": "1000000000001"},
    {**TYPICAL, "price": "1000.01"},
    {**TYPICAL, "account_id": "x" * 65},
    {**TYPICAL, "token_id": "tab\there"},
    {**TYPICAL, "post_only": "true"},
    {**TYPICAL, "expiration": True},
    {**TYPICAL, "expiration": 2**40 + 1},
    {**TYPICAL, "client_order_id": ""},
]  # fmt: skip


@pytest.mark.parametrize("body", BODIES)
def test_validate_agrees_with_is_valid(body):
    serializer = OrderListApi.InputSerializer(data=body)
    if serializer.is_valid():
        assert ORDER_INPUT.validate(body) == dict(serializer.validated_data)
    else:
        with pytest.raises(serializers.ValidationError) as caught:
            ORDER_INPUT.validate(body)
        assert caught.value.detail == serializer.errors


class _Inner(serializers.Serializer):
    name = serializers.CharField()


class _Outer(serializers.Serializer):
    id = serializers.IntegerField()
    label = serializers.CharField(source="meta.label", allow_null=True)
    deep = serializers.CharField(source="meta.more.text", allow_null=True)
    inner = _Inner(allow_null=True)
    items = _Inner(many=True)


_Outer._declared_fields["from"] = serializers.IntegerField(source="start")


class _Obj:
    def __init__(self, **values):
        self.__dict__.update(values)


@pytest.mark.parametrize(
    "value",
    [
        {"id": 1, "meta": {"label": "x", "more": {"text": "t"}}, "inner": {"name": "a"},
         "items": [{"name": "b"}], "start": 5},
        {"id": 2, "meta": None, "inner": None, "items": [], "start": 6},
        _Obj(id=3, meta=_Obj(label=None, more=None), inner=_Obj(name="n"),
             items=[_Obj(name="m")], start=7),
    ],
)  # fmt: skip
def test_render_agrees_with_data(value):
    """Dotted sources through dicts and objects, a None part of a path, nested and listed
    serializers, a field named by a Python keyword."""
    from core.api.shapes import Shape

    if not (isinstance(value, dict) and value["meta"] is None):
        assert Shape(_Outer).render(value) == dict(_Outer(value).data)
    else:  # DRF raises on a None part of a dotted path; the Shape renders null
        assert Shape(_Outer).render(value)["label"] is None
