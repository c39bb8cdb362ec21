"""OpenAPI post-processing: canonical paths and the error-code catalogue, from the code."""

from __future__ import annotations

from typing import Any

from core.errors import PARTNER_ERROR_CODES


def postprocess(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    # Routes accept an optional trailing slash; document the canonical form without it.
    result["paths"] = {
        (path.rstrip("/") if path != "/" else path): item for path, item in result["paths"].items()
    }
    rows = "\n".join(
        f"| `{error.code}` | {error.status} | {error.default_message} |"
        for error in PARTNER_ERROR_CODES
    )
    result["info"]["description"] += (
        "\n\n## Error codes\n\n| code | HTTP | meaning |\n|---|---|---|\n" + rows
    )
    result["info"]["x-error-codes"] = [
        {"code": e.code, "status": e.status} for e in PARTNER_ERROR_CODES
    ]
    return result
