"""POST /v1/orders reads plain bodies without building its serializer
(trading.apis.orders.order_input_fast); whatever that fast path accepts, the serializer must accept
with exactly the same validated data, and whatever else it meets goes to the serializer,
the only source of error messages."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from trading.apis.orders import OrderListApi, order_input_fast, plain_json_body

TYPICAL = {
    "account_id": "5d2c39d6-d203-47c2-999f-4b8f4c470582",
    "token_id": "71321045679252212594626385532706912750332728571942532289631379312455583992563",
    "side": "BUY",
    "type": "market",
    "amount": "2",
}


def _serializer(data: Any) -> tuple[bool, dict[str, Any]]:
    s = OrderListApi.InputSerializer(data=data)
    return s.is_valid(), dict(s.validated_data) if s.is_valid() else s.errors


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal, value types included, and Decimals with the same digits and exponent."""
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if type(x) is not type(y):
            return False
        if isinstance(x, Decimal) and x.as_tuple() != y.as_tuple():
            return False
        if x != y:
            return False
    return True


def test_the_typical_bodies_take_the_fast_path_with_the_serializers_result():
    bodies = [
        TYPICAL,
        {**TYPICAL, "type": "limit", "amount": None, "size": "10", "price": "0.52"},
        {
            **TYPICAL,
            "side": "SELL",
            "type": "limit",
            "size": "5.25",
            "price": "0.5",
            "time_in_force": "GTD",
            "expiration": 1_900_000_000,
            "post_only": True,
            "client_order_id": "bot-42",
        },
        {**TYPICAL, "time_in_force": None, "expiration": None, "client_order_id": None},
        {**TYPICAL, "amount": "1000000000000", "expiration": 2**40, "client_order_id": "x" * 128},
    ]
    for body in bodies:
        fast = order_input_fast(body)
        assert fast is not None, body
        ok, validated = _serializer(body)
        assert ok and _same(fast, validated), (body, fast, validated)
    assert order_input_fast(TYPICAL)["post_only"] is False  # the serializer's default


def test_anything_unusual_goes_to_the_serializer():
    unusual = [
        [TYPICAL],
        {**TYPICAL, "extra": 1},
        {k: v for k, v in TYPICAL.items() if k != "side"},
        {**TYPICAL, "side": "buy"},
        {**TYPICAL, "amount": 2},  # an integer: the serializer decides
        {**TYPICAL, "amount": "2.5e1"},
        {**TYPICAL, "amount": " 2"},
        {**TYPICAL, "amount": "-2"},
        {**TYPICAL, "amount": "1000000000001"},
        {**TYPICAL, "price": "1000.01"},
        {**TYPICAL, "account_id": " padded "},
        {**TYPICAL, "account_id": "x" * 65},
        {**TYPICAL, "token_id": "tab\there"},
        {**TYPICAL, "token_id": "é"},
        {**TYPICAL, "post_only": "true"},
        {**TYPICAL, "expiration": True},
        {**TYPICAL, "expiration": -1},
        {**TYPICAL, "expiration": 2**40 + 1},
        {**TYPICAL, "expiration": "123"},
        {**TYPICAL, "client_order_id": ""},
    ]
    for body in unusual:
        assert order_input_fast(body) is None, body


_text = st.one_of(
    st.text(max_size=6),
    st.text(alphabet="abc-019 \t\x00\x7f", min_size=0, max_size=140),
    st.sampled_from(["BUY", "SELL", "buy", "limit", "market", "GTC", "GTD", "FOK", "FAK"]),
)
_number = st.one_of(
    st.from_regex(r"\A[-+ ]?[0-9]{0,14}(\.[0-9]{0,8})?([eE][-+]?[0-9])?\s?\Z"),
    st.sampled_from(["1000", "1000.0", "1000.0001", "1000000000000", "1000000000000.1", "0"]),
)
_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**41), max_value=2**41),
    st.floats(allow_nan=False),
    _text,
    _number,
    st.lists(st.integers(), max_size=2),
)
_fields = [
    "account_id",
    "token_id",
    "side",
    "type",
    "price",
    "size",
    "amount",
    "time_in_force",
    "expiration",
    "post_only",
    "client_order_id",
]
# Mostly values the fast path takes (so that whole bodies often do), near its edges.
_plain_text = st.text(alphabet="abc-019 \t", min_size=0, max_size=140)
_plain_number = st.one_of(_number, st.from_regex(r"\A[0-9]{1,14}(\.[0-9]{1,8})?\Z"))
_plain: dict[str, st.SearchStrategy[Any]] = {
    "account_id": st.one_of(st.just(TYPICAL["account_id"]), _plain_text),
    "token_id": st.one_of(st.just(TYPICAL["token_id"]), _plain_text),
    "side": st.sampled_from(["BUY", "SELL"]),
    "type": st.sampled_from(["limit", "market"]),
    "price": st.one_of(st.none(), _plain_number),
    "size": st.one_of(st.none(), _plain_number),
    "amount": st.one_of(st.none(), _plain_number),
    "time_in_force": st.one_of(st.none(), st.sampled_from(["GTC", "GTD", "FOK", "FAK"])),
    "expiration": st.one_of(st.none(), st.integers(min_value=-2, max_value=2**40 + 2)),
    "post_only": st.one_of(st.none(), st.booleans()),
    "client_order_id": st.one_of(st.none(), _plain_text),
}
_bodies = st.fixed_dictionaries(
    {name: _plain[name] for name in _fields[:4]},
    optional={
        **{name: st.one_of(_plain[name], _plain[name], _value) for name in _fields[4:]},
        "unknown": _value,
    },
)


@settings(max_examples=600, deadline=None)
@given(body=st.one_of(_bodies, st.dictionaries(st.sampled_from(_fields), _value)))
def test_the_fast_path_agrees_with_the_serializer(body):
    fast = order_input_fast(body)
    if fast is None:
        return
    ok, validated = _serializer(body)
    assert ok, (body, validated)
    assert _same(fast, validated), (body, fast, validated)


def _request(body: bytes, content_type: str = "application/json") -> Request:
    django_request = APIRequestFactory().post("/v1/orders", body, content_type=content_type)
    return Request(django_request, parsers=[JSONParser()])


def _drf_result(request: Request) -> dict[str, Any] | None:
    """What the view gets through DRF's parser and the serializer (None: an error)."""
    try:
        data = request.data
    except Exception:
        return None
    ok, validated = _serializer(data)
    return validated if ok else None


_typical_json = json.dumps(TYPICAL).encode()
_raw_bodies = [
    _typical_json,
    b" " + _typical_json + b"\n",
    _typical_json.replace(b'"amount": "2"', b'"amount": "2", "amount": "3"'),  # last one wins
    _typical_json.replace(b'"2"', b'"\\u0032"'),
    _typical_json.replace(b'"market"', b'"market", "expiration": 123456789012345678901234567890'),
    _typical_json.replace(b'"market"', b'"market", "expiration": NaN'),
    _typical_json.replace(b'"market"', b'"market", "post_only": 1e400'),
    _typical_json.replace(b'"BUY"', b'"\\ud800"'),
    b"\xef\xbb\xbf" + _typical_json,  # a byte-order mark
    _typical_json[:-1],
    b"",
    b"[]",
    _typical_json.replace(b"5d2c39d6", "é".encode("latin-1")),  # not UTF-8
]


def test_plain_json_bodies_read_as_drf_reads_them():
    taken = 0
    for body in _raw_bodies:
        fast = order_input_fast(plain_json_body(_request(body)))
        if fast is not None:
            taken += 1
            assert _same(fast, _drf_result(_request(body))), body
    assert taken >= 3  # the plain ones do take the fast path


def test_only_utf8_json_declared_as_such_is_read_by_orjson():
    assert plain_json_body(_request(_typical_json)) == TYPICAL
    assert plain_json_body(_request(_typical_json, "application/json; charset=UTF-8")) == TYPICAL
    for content_type in ("application/json; charset=latin-1", "text/plain", "application/x-json"):
        assert plain_json_body(_request(_typical_json, content_type)) is None


@settings(max_examples=300, deadline=None)
@given(body=_bodies)
def test_generated_bodies_read_as_drf_reads_them(body):
    raw = json.dumps(body).encode()
    fast = order_input_fast(plain_json_body(_request(raw)))
    if fast is not None:
        assert _same(fast, _drf_result(_request(raw)))
