"""core.api.responses.PlainJSONResponse: the same bytes and headers as a DRF Response rendered by
JSONRenderer, whatever the data, the Accept header or the status."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory
from rest_framework.views import APIView

from core.api.responses import PlainJSONResponse


class _View(APIView):
    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    data: Any = None
    response_class: type[Response] = Response

    def get(self, request: Any) -> Response:
        return self.response_class(self.data, status=201)


def _render(response_class: type[Response], data: Any, accept: str) -> tuple[bytes, str]:
    view = _View.as_view(data=data, response_class=response_class)
    request = APIRequestFactory().get("/x", HTTP_ACCEPT=accept)
    response = view(request)
    response.render()
    assert response.status_code == 201
    return response.content, response["Content-Type"]


def _same(data: Any, accept: str = "application/json") -> bytes:
    plain = _render(PlainJSONResponse, data, accept)
    assert plain == _render(Response, data, accept), data
    return plain[0]


_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["", "\u2028", "a\u2029b", "\x00\x1f\x7f", '"\\/', "é 市场 🙂", "</script>"]
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(data=st.dictionaries(_text, _json, max_size=6))
def test_plain_data_renders_as_drf_renders_it(data):
    _same(data)


def test_other_values_accept_headers_and_big_integers_render_as_drf_renders_them():
    order = {
        "id": str(uuid.uuid4()),
        "price": "0.5",
        "fills": [{"size": "3.96", "epoch": 0, "liquidity": None, "flag": True}],
        "question": "Will it rain\u2028tomorrow?",
    }
    assert _same(order).startswith(b'{"id":"')
    _same({**order, "price": Decimal("0.5")})  # the renderer's encoder
    _same({**order, "at": dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)})
    _same({**order, "day": dt.date(2026, 1, 2), "key": uuid.uuid4()})
    _same({**order, "n": 2**70, "m": -(2**70)})
    for accept in ("*/*", "application/json; indent=4", "application/json;indent=2"):
        _same(order, accept)


def test_plain_data_does_not_reach_the_renderer(monkeypatch):
    from rest_framework.renderers import JSONRenderer

    def refuse(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("rendered by DRF")

    body, content_type = _render(PlainJSONResponse, {"a": ["b", 1, None, True]}, "*/*")
    monkeypatch.setattr(JSONRenderer, "render", refuse)
    assert _render(PlainJSONResponse, {"a": ["b", 1, None, True]}, "*/*") == (body, content_type)
    assert body == b'{"a":["b",1,null,true]}' and content_type == "application/json"
