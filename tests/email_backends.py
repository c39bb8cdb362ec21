"""Email backends for tests: the real Django backend interface, with failures we control."""

from __future__ import annotations

from collections.abc import Sequence

from django.core import mail
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.message import EmailMessage


class FlakyBackend(BaseEmailBackend):
    """Raises for the first `failures_left` sends, then delivers like the locmem backend (to
    django.core.mail.outbox). `attempts` counts every hand-off, failed or not (I4 measures
    both raw attempts and deliveries). Class-level state: reset it with `reset()`."""

    failures_left = 0
    attempts = 0

    @classmethod
    def reset(cls, *, failures: int = 0) -> None:
        cls.failures_left = failures
        cls.attempts = 0

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        cls = type(self)
        cls.attempts += 1
        if cls.failures_left > 0:
            cls.failures_left -= 1
            raise ConnectionRefusedError("SMTP server refused the connection")
        if not hasattr(mail, "outbox"):
            mail.outbox = []
        for message in email_messages:
            message.message()  # render like a real backend would, so bad headers fail here
            mail.outbox.append(message)
        return len(email_messages)
