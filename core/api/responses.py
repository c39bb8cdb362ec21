"""The API's fast JSON response."""

from __future__ import annotations

from typing import Any

import orjson
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response


def _not_plain(value: Any) -> Any:
    raise TypeError  # orjson then raises JSONEncodeError: the renderer decides


class PlainJSONResponse(Response):
    """A DRF Response whose body orjson writes, byte for byte as DRF's JSONRenderer writes it
    (compact, UTF-8, U+2028/U+2029 escaped), when that renderer was negotiated without
    parameters (no `indent`) and `data` holds only dicts, lists, str, int, bool and None.
    It must hold no floats (orjson writes exponents differently); anything else orjson
    cannot write (Decimals, datetimes...) goes to the renderer, as in any Response."""

    @property
    def rendered_content(self) -> Any:
        renderer = getattr(self, "accepted_renderer", None)
        if (
            type(renderer) is JSONRenderer
            and getattr(self, "accepted_media_type", None) == renderer.media_type
            and not renderer.ensure_ascii
            and renderer.compact
            and renderer.charset is None
            and self.content_type is None
            and self.data is not None
        ):
            try:
                content = orjson.dumps(
                    self.data,
                    option=orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS,
                    default=_not_plain,
                )
            except orjson.JSONEncodeError:
                pass
            else:
                self["Content-Type"] = renderer.media_type
                return content.replace(b"\xe2\x80\xa8", b"\\u2028").replace(
                    b"\xe2\x80\xa9", b"\\u2029"
                )
        return super().rendered_content
