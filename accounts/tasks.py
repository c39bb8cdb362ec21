"""Email outbox delivery. Tasks take ids, re-read state under a row lock and are safe to run
twice: a row already sent (or being sent by another worker) is skipped.

Delivery is at-least-once: a crash after the provider accepted a message
and before the row is marked sent leaves it pending, and the sweeper sends it again. The
`X-Idempotency-Key: outbox-<id>` header lets a provider that dedupes on it drop the repeat;
without such a provider the duplicate window is exactly "killed between send and mark".
"""

from __future__ import annotations

import datetime as dt
import logging
from functools import partial

from celery import shared_task
from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from accounts.models import EmailOutbox, LoginToken
from accounts.services.login import EMAIL_OUTBOX_SEND_TASK, LOGIN_LINK_EMAIL_KIND, login_link_url

logger = logging.getLogger("polysim.outbox")

MAX_ATTEMPTS = 10
BACKOFF_BASE_SECONDS = 30
BACKOFF_CAP_SECONDS = 3600
SWEEP_BATCH = 100
# A swept row is not offered again for this long, so a backed-up queue is not flooded with
# copies of the same row every minute; a task that never runs is retried after it.
SWEEP_LEASE = dt.timedelta(minutes=5)
MAX_ERROR_LENGTH = 2000


class _Skip(Exception):
    """The row must not be sent (dead link, unknown kind); the message says why."""


def _retry_delay(attempts: int) -> dt.timedelta:
    seconds = min(BACKOFF_BASE_SECONDS * 2 ** max(attempts - 1, 0), BACKOFF_CAP_SECONDS)
    return dt.timedelta(seconds=seconds)


def _render_login_link(outbox: EmailOutbox) -> EmailMultiAlternatives:
    token = (
        LoginToken.objects.select_related("tenant")
        .filter(pk=outbox.payload.get("login_token_id"))
        .first()
    )
    if token is None:
        raise _Skip("login token no longer exists; not sent")
    if token.used_at is not None or token.expires_at <= timezone.now():
        raise _Skip("login token expired or already used before sending; not sent")
    context = {
        "link": login_link_url(token=token),
        "tenant_name": token.tenant.name if token.tenant is not None else "",
        "valid_minutes": max(1, int(settings.LOGIN_LINK_TTL_SECONDS) // 60),
        "email": outbox.to_email,
    }
    message = EmailMultiAlternatives(
        subject="Your polysim sign-in link",
        body=render_to_string("accounts/email/login_link.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[outbox.to_email],
    )
    message.attach_alternative(
        render_to_string("accounts/email/login_link.html", context), "text/html"
    )
    return message


_RENDERERS = {LOGIN_LINK_EMAIL_KIND: _render_login_link}


@shared_task(name=EMAIL_OUTBOX_SEND_TASK, acks_late=True, ignore_result=True)
def email_outbox_send(outbox_id: int) -> str:
    """Send one outbox row and record the outcome; returns what happened (for logs/tests).

    Holds the row lock (FOR UPDATE SKIP LOCKED) from the status check to the final write, so
    two workers never both send it: the second one skips. A send failure never raises; it is
    recorded (attempts, last_error, backed-off next_attempt_at) and left for the sweeper,
    until MAX_ATTEMPTS makes the row failed.
    """
    with transaction.atomic():
        outbox = (
            EmailOutbox.objects.select_for_update(skip_locked=True)
            .filter(pk=outbox_id, status=EmailOutbox.Status.PENDING)
            .first()
        )
        if outbox is None:
            return "skipped"  # sent already, given up on, unknown, or another worker has it
        renderer = _RENDERERS.get(outbox.kind)
        try:
            if renderer is None:
                raise _Skip(f"unknown outbox kind {outbox.kind!r}; not sent")
            message = renderer(outbox)
        except _Skip as skip:
            outbox.status = EmailOutbox.Status.FAILED
            outbox.last_error = str(skip)
            outbox.save(update_fields=["status", "last_error"])
            logger.info("outbox %s not sent: %s", outbox.pk, skip)
            return "dead"
        except Exception as exc:  # a rendering bug is a failed attempt, not a lost row
            return _record_failure(outbox, exc)
        message.extra_headers["X-Idempotency-Key"] = f"outbox-{outbox.pk}"
        try:
            delivered = message.send(fail_silently=False)
            if delivered != 1:
                raise RuntimeError(f"email backend accepted {delivered} messages, expected 1")
        except Exception as exc:  # any backend failure is recorded, not propagated
            return _record_failure(outbox, exc)
        outbox.attempts += 1
        outbox.status = EmailOutbox.Status.SENT
        outbox.sent_at = timezone.now()
        outbox.last_error = ""
        outbox.save(update_fields=["attempts", "last_error", "status", "sent_at"])
        return "sent"


def _record_failure(outbox: EmailOutbox, exc: Exception) -> str:
    """Count a failed attempt and schedule the next one (caller holds the row lock)."""
    outbox.attempts += 1
    outbox.last_error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH]
    if outbox.attempts >= MAX_ATTEMPTS:
        outbox.status = EmailOutbox.Status.FAILED
    else:
        outbox.next_attempt_at = timezone.now() + _retry_delay(outbox.attempts)
    outbox.save(update_fields=["attempts", "last_error", "status", "next_attempt_at"])
    logger.warning(
        "outbox %s send attempt %s failed: %s", outbox.pk, outbox.attempts, outbox.last_error
    )
    return "failed" if outbox.status == EmailOutbox.Status.FAILED else "retry"


def _enqueue(outbox_ids: list[int]) -> None:
    """After commit; a broker outage leaves the rows leased, and a later sweep retries them."""
    try:
        for outbox_id in outbox_ids:
            email_outbox_send.delay(outbox_id)
    except Exception:
        logger.exception("outbox sweep: could not enqueue %d row(s)", len(outbox_ids))


@shared_task(ignore_result=True)
def outbox_sweep() -> int:
    """Enqueue email_outbox_send for due pending rows (at most SWEEP_BATCH per run); returns
    how many. Recovers rows whose first enqueue was lost or whose worker died.

    Due rows are claimed with FOR UPDATE SKIP LOCKED (a row mid-send is not touched) and
    leased for SWEEP_LEASE before enqueueing on commit, so overlapping sweeps do not enqueue
    the same row twice. A duplicate enqueue would still be harmless: the send task skips rows
    that are no longer pending.
    """
    with transaction.atomic():
        now = timezone.now()
        due = list(
            EmailOutbox.objects.select_for_update(skip_locked=True)
            .filter(status=EmailOutbox.Status.PENDING, next_attempt_at__lte=now)
            .order_by("next_attempt_at", "pk")
            .values_list("pk", flat=True)[:SWEEP_BATCH]
        )
        if due:
            EmailOutbox.objects.filter(pk__in=due).update(next_attempt_at=now + SWEEP_LEASE)
            # robust: a broker outage must not fail the sweep; the lease brings the rows back.
            transaction.on_commit(partial(_enqueue, due))
    return len(due)
