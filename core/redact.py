"""Secrets never reach a log line: one-time login links, API keys and their secrets.

`redact` rewrites a line; `RedactSecrets` applies it to every record of a logging handler
(settings.LOGGING puts it on the console handler, so Django's own "Not Found: <path>" lines
are covered), and `RedactingGunicornLogger` to gunicorn's access and error logs (its access
line holds the request line, the referer and the user agent). The reverse proxy's own log
format is in docs/operations.md ("Logs and secrets").

What is redacted (the rest of the line stays, so operators can still follow a request):
* the token of a one-time login link: `/login/t/<token>` → `/login/t/[redacted]`;
* a partner or trader API key anywhere: `pk_abcd1234_<secret>` → `pk_abcd1234_[redacted]`
  (the 8-character prefix is the key's public id: the admin lists keys by it);
* the value of a query parameter that carries a credential (`api_key`, `key`, `token`, ...).
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "[redacted]"

_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(/login/t/)[^/?#\s\"'&]+"), rf"\g<1>{REDACTED}"),
    (re.compile(r"\b((?:pk|tk)_[a-z0-9]{8})_[A-Za-z0-9_\-]+"), rf"\g<1>_{REDACTED}"),
    (
        re.compile(
            r"([?&;](?:api[_-]?key|apikey|key|token|access_token|auth|secret|password)=)"
            r"[^&;#\s\"']*",
            re.IGNORECASE,
        ),
        rf"\g<1>{REDACTED}",
    ),
)


def redact(text: str) -> str:
    """`text` with every secret above replaced by [redacted]."""
    if "/login/t/" not in text and "_" not in text and "=" not in text:
        return text
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Redacts the formatted message of every record (and drops its args, already merged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def _gunicorn_logger_class() -> Any:
    from gunicorn.glogging import Logger

    class RedactingGunicornLogger(Logger):  # type: ignore[misc]
        """gunicorn's logger with every access-log atom and error-log record redacted."""

        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            for log in (self.error_log, self.access_log):
                for handler in log.handlers:
                    handler.addFilter(RedactSecrets())

        def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
            return {
                k: redact(v) if isinstance(v, str) else v
                for k, v in super().atoms(resp, req, environ, request_time).items()
            }

    return RedactingGunicornLogger


RedactingGunicornLogger = _gunicorn_logger_class()
