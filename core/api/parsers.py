"""The one JSON body parser of both APIs: what PostgreSQL can store and Python can hold, or a
400 MALFORMED_JSON naming why (never a 500 further in).

Parsed by orjson, which refuses what the standard library lets through: lone UTF-16
surrogates (PostgreSQL's UTF-8 text cannot hold them), numbers that overflow a double
(`1e999` would be infinity), `NaN`/`Infinity`. On top: no NUL character in any string or
key (PostgreSQL text cannot hold U+0000) and at most MAX_DEPTH levels of nesting (the
standard library recursed until a RecursionError)."""

from __future__ import annotations

from typing import Any

import orjson
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser

MAX_DEPTH = 32  # no request body of either API nests deeper than 3


def _check(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ParseError(f"JSON nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise ParseError("JSON strings may not contain NUL (\\u0000)")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check(key, depth + 1)
            _check(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check(item, depth + 1)


class StrictJsonParser(BaseParser):
    media_type = "application/json"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        raw = stream.read() if stream is not None else b""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        _check(data, 0)
        return data
